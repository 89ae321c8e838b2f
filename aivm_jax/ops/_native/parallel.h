// Helpers shared by the CPU kernels: a parallel loop on XLA's intra-op thread pool and
// per-thread scratch buffers.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
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

// How many pool threads help the caller: none when `work` is under `serial_below` (a hand-off
// would cost more than it saves), else all but one (the caller is the other).
inline int64_t helpers_for(xla::ffi::ThreadPool& pool, int64_t work, int64_t serial_below) {
  return work < serial_below ? 0 : std::max<int64_t>(1, pool.num_threads()) - 1;
}

// Runs fn(0..n-1) on the caller and up to `helpers` pool threads; returns when all are done.
//
// Each of the T = helpers + 1 threads owns a contiguous range of indices and runs it front to
// back, so it streams through its own part of the operands. It claims half of what is left of
// its range at a time (32 indices take 6 claims): every claim is a locked instruction, which on
// x86 waits for the thread's pending stores, and one claim per index ran about 1.5% slower on
// char-gpt's head GEMM. A thread whose range is spent takes indices one at a time from the back
// of the others' ranges, so a late or slow helper costs at most its unclaimed indices. A range
// is one 64-bit word, front in the low half and back in the high half: the owner adds its
// claim, a thief subtracts 2**32, and the old word says what each got (indices in [front, back)
// were still free). Threads add their count of finished indices to `done` once; late pool tasks
// find every range spent and touch nothing but the shared state. n must be under 2**31 (larger
// n runs on the caller alone).
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t helpers, F& fn) {
  helpers = std::min(helpers, n - 1);
  if (helpers <= 0 || n >= (int64_t{1} << 31)) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  const int64_t T = helpers + 1;
  struct alignas(64) Range {
    std::atomic<uint64_t> word;
  };
  struct State {
    explicit State(int64_t n, int64_t T) : ranges(T) {
      for (int64_t t = 0; t < T; ++t)
        ranges[t].word.store(static_cast<uint64_t>(t * n / T) | static_cast<uint64_t>((t + 1) * n / T) << 32,
                             std::memory_order_relaxed);
    }
    std::vector<Range> ranges;
    alignas(64) std::atomic<int64_t> done{0};
    alignas(64) std::atomic<int64_t> next_helper{1};
  };
  auto state = std::make_shared<State>(n, T);
  F* body = &fn;
  auto run = [state, body, T](int64_t self) {
    int64_t finished = 0;
    auto& own = state->ranges[self].word;
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
      auto& word = state->ranges[(self + k) % T].word;
      for (;;) {
        const uint64_t old = word.fetch_sub(uint64_t{1} << 32, std::memory_order_relaxed);
        const int64_t front = static_cast<int32_t>(old), back = static_cast<int32_t>(old >> 32);
        if (back - 1 < front) break;
        (*body)(back - 1);
        ++finished;
      }
    }
    if (finished > 0) state->done.fetch_add(finished, std::memory_order_release);
  };
  for (int64_t h = 0; h < helpers; ++h)
    pool.Schedule([state, run]() { run(state->next_helper.fetch_add(1, std::memory_order_relaxed)); });
  run(0);
  while (state->done.load(std::memory_order_acquire) < n) _mm_pause();
}

}  // namespace aivm
