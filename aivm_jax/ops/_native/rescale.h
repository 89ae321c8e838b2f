// The opset's requantize rescale on eight int64 lanes, shared by the kernels that end in one
// (aivm_jax/ops/reference.py::requantize):
//   y = floor((x M + half) / 2**s), half = 2**(s-1) if s > 0 else 0,
// then saturated by the caller's store (VPMOVSQB to int8, VPMOVSQD to int32). With |x| <= 2**31
// and |M| <= 2**31 the product and the sum stay below 2**63, so nothing wraps, and the arithmetic
// shift is the floor.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace aivm {

// Requantize's per-channel multiplier and shift (int32, one per output column), for kernels that end
// in a requantize to int8; null pointers where a kernel's int32 result is stored as it is.
struct Rescale {
  const int32_t* multiplier;
  const int32_t* shift;
};

// Whether every one of the n shifts lies in [0, 62], requantize's range (checked before a kernel runs).
inline bool shifts_in_range(const int32_t* shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (shift[i] < 0 || shift[i] > 62) return false;
  return true;
}

// x and multiplier as int64 lanes holding int32 values, shift in [0, 62]. VPMULDQ multiplies the
// signed low 32 bits of each lane into the exact 64-bit product.
inline __m512i rescale8(__m512i x, __m512i multiplier, __m512i shift) {
  const __m512i half = _mm512_srli_epi64(_mm512_sllv_epi64(_mm512_set1_epi64(1), shift), 1);  // 0 for s = 0
  return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, multiplier), half), shift);
}

// Eight int32 values at p (masked) as int64 lanes.
inline __m512i load8_epi64(const int32_t* p, __mmask8 lanes) {
  return _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, p));
}

// Stores of eight int64 lanes narrowed in a register first: the narrowing stores to memory
// (VPMOVSQB/VPMOVSQD/VPMOVQD with a memory operand) are microcoded and slow on AMD Zen 4.
inline void store8_int8_saturated(int8_t* out, __mmask8 lanes, __m512i z) {
  _mm_mask_storeu_epi8(out, lanes, _mm512_cvtsepi64_epi8(z));
}
inline void store8_int32_saturated(int32_t* out, __mmask8 lanes, __m512i z) {
  _mm256_mask_storeu_epi32(out, lanes, _mm512_cvtsepi64_epi32(z));
}
inline void store8_int32_truncated(int32_t* out, __mmask8 lanes, __m512i z) {
  _mm256_mask_storeu_epi32(out, lanes, _mm512_cvtepi64_epi32(z));
}

}  // namespace aivm
