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
// Late pool tasks find no index left and touch nothing but the shared counters.
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t helpers, F& fn) {
  helpers = std::min(helpers, n - 1);
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  F* body = &fn;
  auto work = [state, body, n]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      (*body)(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < n) _mm_pause();
}

}  // namespace aivm
