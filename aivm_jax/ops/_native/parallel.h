// Helpers shared by the CPU kernels: a parallel loop, the threads that help it, and per-thread
// scratch buffers.
#pragma once

#include <immintrin.h>
#include <pthread.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace aivm {

// A growable 64-byte-aligned buffer; one per thread and purpose (declare them thread_local).
struct Scratch {
  std::vector<uint8_t, std::allocator<uint8_t>> raw;
  uint8_t* get(size_t bytes) {
    if (raw.size() < bytes + 64) raw.resize(bytes + 64);
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t{63});
  }
};

// x rounded up to a multiple of m (m > 0).
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The mask of the first min(left, 8) of eight 64-bit lanes (a loop's tail).
inline __mmask8 lanes_left(int64_t left) { return left >= 8 ? 0xff : static_cast<__mmask8>((1u << left) - 1); }

// The mask of the first min(left, 16) of sixteen 32-bit lanes.
inline __mmask16 lanes16_left(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// How many helper threads join the caller: none when `work` is under `serial_below` (a hand-off
// would cost more than it saves), else all but one (the caller is the other).
inline int64_t helpers_for(xla::ffi::ThreadPool& pool, int64_t work, int64_t serial_below) {
  return work < serial_below ? 0 : std::max<int64_t>(1, pool.num_threads()) - 1;
}

// What a parallel loop hands its helpers: help() joins the loop (see parallel_for).
struct LoopJob {
  virtual ~LoopJob() = default;
  virtual void help() = 0;
};

// The library's own helper threads: pool.num_threads() - 1 of them (the caller is the other),
// started by the first parallel loop that uses them and kept for the life of the process (named
// aivm-helper). They serve callers outside XLA's intra-op pool: XLA runs a program it judges
// cheap on the thread that called it, and the kernels' small products are in such programs.
//
// Why not XLA's pool for those callers: it has pool.num_threads() workers, so with the caller
// that is one thread more than cores, and a worker stays awake spinning for a while after each
// task. Between a program's closely spaced loops both workers spun, about 90% of a core on this
// 2-core machine, and whenever one shared the caller's core the call ran 4x slower (episodes of
// 5-10 ms; in a loop of fc1 products, 5-9% of calls took over twice the median). With the team,
// XLA's workers stay parked. When the caller is itself one of XLA's workers, its fellow workers
// are the right helpers (as many threads as cores): there the team made a third busy thread and
// char-gpt at 32 windows of 128 tokens ran 25-50% slower, so such callers keep XLA's pool.
//
// A helper spins for kSpinMicros after its last task, then parks on a futex; a loop that finds it
// parked wakes it with one system call and does not wait for it. No loop waits for a helper to
// start: parallel_for's caller takes every task no helper has claimed, so a late or descheduled
// helper only costs the parallelism. So an offer may replace an earlier one no helper has taken
// yet, and a caller that finds another caller handing off a task at this very moment takes XLA's
// pool instead of waiting for it.
class HelperTeam {
 public:
  // Long enough to span the gaps between a program's loops and between closely spaced calls (a
  // digits-mlp call at batch 256 is about 14 us), short enough to leave the core soon after.
  static constexpr int64_t kSpinMicros = 100;

  // The process's team, started on the first call with `size` threads (later sizes are ignored).
  static HelperTeam& instance(int64_t size) {
    static HelperTeam* const team = new HelperTeam(size);  // never destroyed: its threads live on
    return *team;
  }

  // Hands `job` to up to `count` team threads; returns how many were offered it (0: none).
  int64_t offer(const std::shared_ptr<LoopJob>& job, int64_t count) {
    count = std::min(count, size_);
    if (count <= 0 || !lock_.try_lock()) return 0;
    job_ = job;
    unclaimed_ = count;
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    lock_.unlock();
    if (parked_.load(std::memory_order_seq_cst) > 0) wake(static_cast<int>(count));
    return count;
  }

 private:
#if defined(__linux__)
  explicit HelperTeam(int64_t size) : size_(std::max<int64_t>(0, size)) {
    for (int64_t t = 0; t < size_; ++t)
      std::thread([this] {
        pthread_setname_np(pthread_self(), "aivm-helper");
        serve();
      }).detach();
  }
#else  // no futex to park on: every helper comes from XLA's pool
  explicit HelperTeam(int64_t) : size_(0) {}
#endif

  // One team thread: wait for a new offer (spinning, then parked), claim it if a slot is left, run it.
  void serve() {
    uint32_t seen = 0;  // the epoch when the team started: no offer can come before the constructor returns
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      for (int spins = 1; epoch_.load(std::memory_order_acquire) == seen; ++spins) {
        _mm_pause();
        if (spins % 64 == 0 &&
            std::chrono::steady_clock::now() - idle_since > std::chrono::microseconds(kSpinMicros)) {
          park(seen);
          idle_since = std::chrono::steady_clock::now();
        }
      }
      std::shared_ptr<LoopJob> job;
      {
        std::lock_guard<std::mutex> hold(lock_);
        seen = epoch_.load(std::memory_order_relaxed);
        if (unclaimed_ > 0) {
          --unclaimed_;
          job = job_;
        }
      }
      if (job) job->help();
    }
  }

  // Sleeps until the epoch moves past `seen`. With the offer's order (bump the epoch, then read
  // parked_) and this one (count in parked_, then read the epoch) one side always sees the other.
  void park(uint32_t seen) {
#if defined(__linux__)
    parked_.fetch_add(1, std::memory_order_seq_cst);
    while (epoch_.load(std::memory_order_seq_cst) == seen)
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
    parked_.fetch_sub(1, std::memory_order_seq_cst);
#endif
  }

  void wake(int count) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
#endif
  }

  const int64_t size_;
  std::mutex lock_;
  std::shared_ptr<LoopJob> job_;  // the latest offer (guarded by lock_)
  int64_t unclaimed_ = 0;         // its slots no team thread has taken yet (guarded by lock_)
  alignas(64) std::atomic<uint32_t> epoch_{0};  // bumped by every offer; 32 bits for the futex
  alignas(64) std::atomic<int32_t> parked_{0};  // team threads asleep on epoch_
};

// Whether the calling thread is one of XLA's intra-op workers, which XLA names tf_XLAEigen (asked
// once per thread). Were the name to change, every caller would take the team: slower on programs
// XLA runs on its pool, never a different result.
inline bool on_xla_pool_thread() {
  thread_local const bool on_pool = [] {
    char name[16] = {};
    return pthread_getname_np(pthread_self(), name, sizeof name) == 0 && std::strstr(name, "XLAEigen") != nullptr;
  }();
  return on_pool;
}

constexpr int64_t kInlineRanges = 4;

struct alignas(64) LoopRange {  // one thread's range of indices (see parallel_for)
  std::atomic<uint64_t> word;
};

// parallel_for's shared state, one allocation for up to kInlineRanges threads: the team and XLA's
// pool hold it by shared_ptr, so a helper that starts after the loop returned finds it intact.
template <typename F>
struct ParallelLoop final : LoopJob {
  ParallelLoop(F* body, int64_t n, int64_t T) : body(body), T(T) {
    if (T > kInlineRanges) more_ranges = std::vector<LoopRange>(T);
    ranges = T > kInlineRanges ? more_ranges.data() : inline_ranges;
    for (int64_t t = 0; t < T; ++t)
      ranges[t].word.store(static_cast<uint64_t>(t * n / T) | static_cast<uint64_t>((t + 1) * n / T) << 32,
                           std::memory_order_relaxed);
  }
  void help() override { run(next_helper.fetch_add(1, std::memory_order_relaxed)); }
  void run(int64_t self) {
    int64_t finished = 0;
    auto& own = ranges[self].word;
    for (;;) {  // own range, front to back, half of what is left at a time
      const uint64_t seen = own.load(std::memory_order_relaxed);
      const int64_t left = static_cast<int32_t>(seen >> 32) - static_cast<int32_t>(seen);
      const int64_t take = std::max<int64_t>(1, left / 2);
      const uint64_t old = own.fetch_add(static_cast<uint64_t>(take), std::memory_order_relaxed);
      const int64_t front = static_cast<int32_t>(old), back = static_cast<int32_t>(old >> 32);
      const int64_t end = std::min(back, front + take);
      for (int64_t i = front; i < end; ++i) (*body)(i);
      finished += std::max<int64_t>(0, end - front);
      if (front + take >= back) break;
    }
    for (int64_t k = 1; k < T; ++k) {  // then the others' ranges, from their backs
      auto& word = ranges[(self + k) % T].word;
      for (;;) {
        const uint64_t old = word.fetch_sub(uint64_t{1} << 32, std::memory_order_relaxed);
        const int64_t front = static_cast<int32_t>(old), back = static_cast<int32_t>(old >> 32);
        if (back - 1 < front) break;
        (*body)(back - 1);
        ++finished;
      }
    }
    if (finished > 0) done.fetch_add(finished, std::memory_order_release);
  }
  F* const body;  // the caller's; only read while an index is unclaimed, so never after the loop returns
  const int64_t T;
  LoopRange inline_ranges[kInlineRanges];
  std::vector<LoopRange> more_ranges;
  LoopRange* ranges;
  alignas(64) std::atomic<int64_t> done{0};
  alignas(64) std::atomic<int64_t> next_helper{1};
};

// Runs fn(0..n-1) on the caller and up to `helpers` helper threads (for a caller outside XLA's
// pool the team's first, then XLA's pool for any more); returns when all are done.
//
// Each of the T = helpers + 1 threads owns a contiguous range of indices and runs it front to
// back, so it streams through its own part of the operands. It claims half of what is left of
// its range at a time (32 indices take 6 claims): every claim is a locked instruction, which on
// x86 waits for the thread's pending stores, and one claim per index ran about 1.5% slower on
// char-gpt's head GEMM. A thread whose range is spent takes indices one at a time from the back
// of the others' ranges, so a late or slow helper costs at most its unclaimed indices. A range
// is one 64-bit word, front in the low half and back in the high half: the owner adds its
// claim, a thief subtracts 2**32, and the old word says what each got (indices in [front, back)
// were still free). Threads add their count of finished indices to `done` once; late helpers
// find every range spent and touch nothing but the shared state. n must be under 2**31 (larger
// n runs on the caller alone).
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t helpers, F& fn) {
  helpers = std::min(helpers, n - 1);
  if (helpers <= 0 || n >= (int64_t{1} << 31)) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const auto loop = std::make_shared<ParallelLoop<F>>(&fn, n, helpers + 1);
  int64_t h = 0;  // helpers found so far
  if (!on_xla_pool_thread())
    h = HelperTeam::instance(std::max<int64_t>(1, pool.num_threads()) - 1).offer(loop, helpers);
  for (; h < helpers; ++h) pool.Schedule([loop]() { loop->help(); });
  loop->run(0);
  while (loop->done.load(std::memory_order_acquire) < n) _mm_pause();
}

}  // namespace aivm
