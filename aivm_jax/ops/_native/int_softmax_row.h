// One row of the opset's integer softmax (aivm_jax/ops/reference.py::softmax), shared by the
// softmax kernel (int_softmax.cc) and the fused attention kernel (int_attention.cc).
//
//   kept j: mask[j] != 0 and j <= last_key (causality is folded into last_key by the caller);
//   m = max of the kept scores; d = m - x_j in [0, 2**32) (uint32, exact);
//   e_j = table[d mod 2**k] >> min(d >> k, 31) (int32, arithmetic shift), 0 where not kept;
//   S = sum e_j (int64); p_j = (e_j * (2**62 div S) + 2**(61 - out_bits)) >> (62 - out_bits), 0 if S = 0.
// All integer.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>

#include "parallel.h"

namespace aivm {

// Writes p for keys [0, tk) into out (zeros where not kept); e is scratch for min(tk, last_key + 1)
// int32 values. Returns the number of leading keys that may be nonzero, min(tk, last_key + 1), or 0.
// AVX-512, sixteen keys at a time; every lane does the scalar recipe above.
inline int64_t softmax_row(const int32_t* x, const int8_t* mask, int64_t tk, int64_t last_key,
                           const int32_t* table, int64_t k, int64_t out_bits, int32_t* e, int32_t* out) {
  const int64_t keys = std::max<int64_t>(0, std::min<int64_t>(tk, last_key + 1));
  std::memset(out, 0, sizeof(int32_t) * tk);
  const __m128i zero8 = _mm_setzero_si128();
  __m512i row_max = _mm512_set1_epi32(INT32_MIN);
  __mmask16 any = 0;
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 live = lanes16_left(keys - j);
    const __mmask16 kept = _mm_mask_cmpneq_epi8_mask(live, _mm_maskz_loadu_epi8(live, mask + j), zero8);
    row_max = _mm512_mask_max_epi32(row_max, kept, row_max, _mm512_maskz_loadu_epi32(live, x + j));
    any |= kept;
  }
  if (any == 0) return 0;
  const __m512i m = _mm512_set1_epi32(_mm512_reduce_max_epi32(row_max));
  const __m512i low = _mm512_set1_epi32(static_cast<int32_t>((uint32_t{1} << k) - 1));
  const __m512i thirty_one = _mm512_set1_epi32(31);
  const __m128i k_count = _mm_cvtsi64_si128(k);
  __m512i total = _mm512_setzero_si512();  // eight int64 partial sums
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 live = lanes16_left(keys - j);
    const __mmask16 kept = _mm_mask_cmpneq_epi8_mask(live, _mm_maskz_loadu_epi8(live, mask + j), zero8);
    const __m512i d = _mm512_sub_epi32(m, _mm512_maskz_loadu_epi32(live, x + j));  // m - x mod 2**32
    const __m512i whole = _mm512_min_epu32(_mm512_srl_epi32(d, k_count), thirty_one);
    const __m512i fraction = _mm512_and_si512(d, low);
    const __m512i looked_up = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), kept, fraction, table, 4);
    const __m512i value = _mm512_maskz_srav_epi32(kept, looked_up, whole);
    _mm512_mask_storeu_epi32(e + j, live, value);
    total = _mm512_add_epi64(total, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(value)));
    total = _mm512_add_epi64(total, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(value, 1)));
  }
  const int64_t sum = _mm512_reduce_add_epi64(total);
  if (sum <= 0) return 0;
  const __m512i inverse = _mm512_set1_epi64((int64_t{1} << 62) / sum);
  const __m512i half = _mm512_set1_epi64(int64_t{1} << (61 - out_bits));
  const __m128i p_count = _mm_cvtsi64_si128(62 - out_bits);
  for (int64_t j = 0; j < keys; j += 8) {  // e_j * inverse <= 2**62: exact in int64
    const __mmask8 live = lanes_left(keys - j);
    const __m512i wide = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(live, e + j));
    const __m512i p = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mullo_epi64(wide, inverse), half), p_count);
    _mm256_mask_storeu_epi32(out + j, live, _mm512_cvtepi64_epi32(p));
  }
  return keys;
}

}  // namespace aivm
