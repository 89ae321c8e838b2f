// int8 max and average pooling (NHWC) as XLA FFI custom calls: the opset's max_pool and avg_pool.
//
// Plain integer loops, one thread: XLA's reduce_window costs more in thread hand-offs than in
// arithmetic at these sizes. Semantics (see aivm_jax/ops/reference.py):
//   max_pool: the maximum over the in-bounds part of each window (padding never wins);
//   avg_pool: S = sum of the in-bounds values (int32, exact: at most 2**23 int8 values), n = their
//             count, y = floor((2S + n) / (2n)), the mean rounded half up.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error Int8PoolImpl(ffi::Buffer<ffi::S8> x, ffi::ResultBuffer<ffi::S8> y, bool average, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t top, int64_t left) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3] || kh < 1 || kw < 1 || sh < 1 || sw < 1)
    return ffi::Error::InvalidArgument("aivm_int8_pool: bad shapes or geometry");
  const int64_t B = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = yd[1], Wo = yd[2];
  const int8_t* in = x.typed_data();
  int8_t* out = y->typed_data();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t y0 = std::max<int64_t>(0, i * sh - top), y1 = std::min<int64_t>(H, i * sh - top + kh);
        const int64_t z0 = std::max<int64_t>(0, j * sw - left), z1 = std::min<int64_t>(W, j * sw - left + kw);
        if (y0 >= y1 || z0 >= z1) return ffi::Error::InvalidArgument("aivm_int8_pool: a window is all padding");
        int8_t* po = out + ((b * Ho + i) * Wo + j) * C;
        if (!average) {  // 64 channels per step, byte-wise max
          for (int64_t c0 = 0; c0 < C; c0 += 64) {
            const __mmask64 k = C - c0 >= 64 ? ~__mmask64{0} : (__mmask64{1} << (C - c0)) - 1;
            __m512i best = _mm512_set1_epi8(-128);
            for (int64_t p = y0; p < y1; ++p)
              for (int64_t q = z0; q < z1; ++q)
                best = _mm512_max_epi8(best, _mm512_maskz_loadu_epi8(k, in + ((b * H + p) * W + q) * C + c0));
            _mm512_mask_storeu_epi8(po + c0, k, best);
          }
          continue;
        }
        // 16 channels per step: int32 sums S, then floor((2S + n) / 2n) by restoring division. With
        // d = 2n and v = 2S + n in [-255n, 255n], v + 128d lies in [0, 256d), so its quotient has 8 bits.
        const int32_t n = static_cast<int32_t>((y1 - y0) * (z1 - z0));
        const __m512i d = _mm512_set1_epi32(2 * n);
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
          const __mmask16 k = C - c0 >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (C - c0)) - 1);
          __m512i sum = _mm512_setzero_si512();
          for (int64_t p = y0; p < y1; ++p)
            for (int64_t q = z0; q < z1; ++q)
              sum = _mm512_add_epi32(
                  sum, _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, in + ((b * H + p) * W + q) * C + c0)));
          __m512i rest = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(sum, sum), _mm512_set1_epi32(n)),
                                          _mm512_set1_epi32(256 * n));
          __m512i quotient = _mm512_setzero_si512();
          for (int bit = 7; bit >= 0; --bit) {
            const __m512i step = _mm512_slli_epi32(d, bit);
            const __mmask16 fits = _mm512_cmpge_epi32_mask(rest, step);
            rest = _mm512_mask_sub_epi32(rest, fits, rest, step);
            quotient = _mm512_mask_or_epi32(quotient, fits, quotient, _mm512_set1_epi32(1 << bit));
          }
          const __m512i mean = _mm512_sub_epi32(quotient, _mm512_set1_epi32(128));
          _mm_mask_storeu_epi8(po + c0, k, _mm512_cvtepi32_epi8(mean));
        }
      }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmInt8Pool, Int8PoolImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Attr<bool>("average")
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));
