// The opset's integer layer normalization as an XLA FFI custom call.
//
// Per row of x (int32, D elements, D <= 8192), exactly as aivm_jax/ops/reference.py::layer_norm:
//   v = clip(x, -2**24, 2**24); mean = floor(sum v / D); c = v - mean;
//   var = floor(sum c**2 / D); r = max(isqrt(var + eps), 1);
//   y = floor((2 c gamma + r) / (2 r)) + beta, saturated to int32.
// Every step is exact in int64: |c| <= 2**25, sum c**2 < 2**63, var + eps < 2**52, |2 c gamma + r| < 2**58.
//
// The per-element division by the row's divisor m = 2r uses a multiplier instead of a
// divide instruction (Granlund and Montgomery): with l = ceil(log2 m) and
// M = ceil(2**(63+l) / m), floor(u / m) = floor(u M / 2**(63+l)) for every 0 <= u < 2**63.
// Proof: M m = 2**(63+l) + e with 0 <= e < m, so u M / 2**(63+l) = u/m + u e / (m 2**(63+l)),
// and the second term is < 2**63 m / (m 2**(63+l)) = 2**-l <= 1/m, while the fraction of
// u/m is at most (m-1)/m: the sum never reaches the next integer. Negative numerators use
// floor(n / m) = -floor((-n + m - 1) / m). All integer; rows are independent.
//
// A second target, aivm_int_layer_norm_int8, ends each row with the requantize to int8 that
// usually follows a layer norm (rescale.h), so the int32 rows are never stored.
#include <climits>
#include <cstdint>

#include "parallel.h"
#include "rescale.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kInputLimit = int64_t{1} << 24;

int64_t floor_div(int64_t n, int64_t d) {  // d > 0
  const int64_t q = n / d;
  return (n % d != 0 && n < 0) ? q - 1 : q;
}

// Floor square root of v in [0, 2**52), one bit at a time (as the JAX lowering).
int64_t isqrt(int64_t v) {
  int64_t root = 0;
  for (int bit = 25; bit >= 0; --bit) {
    const int64_t candidate = root | (int64_t{1} << bit);
    if (candidate * candidate <= v) root = candidate;
  }
  return root;
}

// floor(u * magic / 2**(64 + high_shift)) for eight u in [0, 2**63): the high half of the
// 128-bit products from four 32 x 32 -> 64 products per lane, carries included.
inline __m512i mul_high_shift(__m512i u, __m512i magic, __m128i high_shift) {
  const __m512i low32 = _mm512_set1_epi64(0xffffffff);
  const __m512i u_hi = _mm512_srli_epi64(u, 32), m_hi = _mm512_srli_epi64(magic, 32);
  const __m512i p0 = _mm512_mul_epu32(u, magic), p1 = _mm512_mul_epu32(u_hi, magic);
  const __m512i p2 = _mm512_mul_epu32(u, m_hi), p3 = _mm512_mul_epu32(u_hi, m_hi);
  const __m512i mid = _mm512_add_epi64(_mm512_add_epi64(_mm512_srli_epi64(p0, 32), _mm512_and_si512(p1, low32)),
                                       _mm512_and_si512(p2, low32));
  __m512i high = _mm512_add_epi64(p3, _mm512_add_epi64(_mm512_srli_epi64(p1, 32), _mm512_srli_epi64(p2, 32)));
  high = _mm512_add_epi64(high, _mm512_srli_epi64(mid, 32));
  return _mm512_srl_epi64(high, high_shift);
}

inline __m512i load_clamped(const int32_t* x, __mmask8 lanes) {
  const __m512i v = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, x));
  return _mm512_min_epi64(_mm512_max_epi64(v, _mm512_set1_epi64(-kInputLimit)), _mm512_set1_epi64(kInputLimit));
}

using aivm::Rescale;

// One row; Out = int32_t stores the layer norm, Out = int8_t stores requantize(layer norm, rescale).
template <typename Out>
void layer_norm_row(const int32_t* x, const int32_t* gamma, const int32_t* beta, int64_t d, int64_t eps,
                    const Rescale& rescale, Out* out) {
  __m512i sums = _mm512_setzero_si512();
  for (int64_t i = 0; i < d; i += 8) sums = _mm512_add_epi64(sums, load_clamped(x + i, aivm::lanes_left(d - i)));
  const int64_t mean = floor_div(_mm512_reduce_add_epi64(sums), d);
  const __m512i means = _mm512_set1_epi64(mean);
  __m512i squares = _mm512_setzero_si512();  // |c| <= 2**25: c * c by the 32 x 32 -> 64 product
  for (int64_t i = 0; i < d; i += 8) {
    const __mmask8 lanes = aivm::lanes_left(d - i);
    const __m512i c = _mm512_sub_epi64(load_clamped(x + i, lanes), means);
    squares = _mm512_mask_add_epi64(squares, lanes, squares, _mm512_mul_epi32(c, c));
  }
  const int64_t var = _mm512_reduce_add_epi64(squares) / d;
  const int64_t root = std::max<int64_t>(isqrt(var + eps), 1);
  // Divide by m = 2 root >= 2: l = ceil(log2 m) >= 1, magic = ceil(2**(63+l) / m) < 2**64.
  const int64_t m = 2 * root;
  int l = 0;
  while ((int64_t{1} << l) < m) ++l;
  const unsigned __int128 top = static_cast<unsigned __int128>(1) << (63 + l);
  const uint64_t magic = static_cast<uint64_t>((top + static_cast<unsigned __int128>(m) - 1) / m);
  const __m512i magics = _mm512_set1_epi64(static_cast<int64_t>(magic));
  const __m128i high_shift = _mm_cvtsi32_si128(l - 1);
  const __m512i roots = _mm512_set1_epi64(root), round_up = _mm512_set1_epi64(m - 1);
  for (int64_t i = 0; i < d; i += 8) {
    const __mmask8 lanes = aivm::lanes_left(d - i);
    const __m512i c = _mm512_sub_epi64(load_clamped(x + i, lanes), means);
    const __m512i g = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, gamma + i));
    const __m512i b = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, beta + i));
    // n = 2 c gamma + root, |n| < 2**58; floor(n / m) = -floor((-n + m - 1) / m) when n < 0.
    const __m512i n = _mm512_add_epi64(_mm512_slli_epi64(_mm512_mul_epi32(c, g), 1), roots);
    const __mmask8 negative = _mm512_cmplt_epi64_mask(n, _mm512_setzero_si512());
    const __m512i u = _mm512_mask_add_epi64(n, negative, _mm512_sub_epi64(_mm512_setzero_si512(), n), round_up);
    __m512i q = mul_high_shift(u, magics, high_shift);
    q = _mm512_mask_sub_epi64(q, negative, _mm512_setzero_si512(), q);
    const __m512i y = _mm512_add_epi64(q, b);
    if constexpr (sizeof(Out) == 4) {
      aivm::store8_int32_saturated(out + i, lanes, y);
    } else {  // the int32 result (saturated), then requantize's rescale, saturated to int8
      const __m512i y32 = _mm512_min_epi64(_mm512_max_epi64(y, _mm512_set1_epi64(INT32_MIN)),
                                           _mm512_set1_epi64(INT32_MAX));
      const __m512i z = aivm::rescale8(y32, aivm::load8_epi64(rescale.multiplier + i, lanes),
                                       aivm::load8_epi64(rescale.shift + i, lanes));
      aivm::store8_int8_saturated(out + i, lanes, z);
    }
  }
}

template <typename Out>
ffi::Error LayerNorm(ffi::ThreadPool& pool, ffi::Buffer<ffi::S32>& x, ffi::Buffer<ffi::S32>& gamma,
                     ffi::Buffer<ffi::S32>& beta, const Rescale& rescale, Out* ys, int64_t eps) {
  const auto xd = x.dimensions();
  const int64_t d = xd.size() == 0 ? 0 : xd.back();
  if (xd.size() == 0 || d < 1 || d > 8192 || gamma.element_count() != d || beta.element_count() != d || eps < 0 ||
      eps >= (int64_t{1} << 31))
    return ffi::Error::InvalidArgument("aivm_int_layer_norm: bad shapes or eps");
  const int64_t rows = x.element_count() / d;
  const int32_t* xs = x.typed_data();
  constexpr int64_t kRowsPerTask = 32;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  auto body = [&](int64_t t) {
    for (int64_t r = t * kRowsPerTask; r < std::min(rows, (t + 1) * kRowsPerTask); ++r)
      layer_norm_row(xs + r * d, gamma.typed_data(), beta.typed_data(), d, eps, rescale, ys + r * d);
  };
  const int64_t helpers = aivm::helpers_for(pool, rows * d, int64_t{1} << 15);
  aivm::parallel_for(pool, tasks, helpers, body);
  return ffi::Error::Success();
}

ffi::Error LayerNormImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> x, ffi::Buffer<ffi::S32> gamma,
                         ffi::Buffer<ffi::S32> beta, ffi::ResultBuffer<ffi::S32> y, int64_t eps) {
  return LayerNorm(pool, x, gamma, beta, Rescale{nullptr, nullptr}, y->typed_data(), eps);
}

// requantize(layer_norm(x), multiplier, shift) to int8, per channel: the int32 rows never stored.
ffi::Error LayerNormInt8Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> x, ffi::Buffer<ffi::S32> gamma,
                             ffi::Buffer<ffi::S32> beta, ffi::Buffer<ffi::S32> multiplier,
                             ffi::Buffer<ffi::S32> shift, ffi::ResultBuffer<ffi::S8> y, int64_t eps) {
  const int64_t d = gamma.element_count();
  if (multiplier.element_count() != d || shift.element_count() != d)
    return ffi::Error::InvalidArgument("aivm_int_layer_norm_int8: multiplier and shift need one value per channel");
  if (!aivm::shifts_in_range(shift.typed_data(), d))
    return ffi::Error::InvalidArgument("aivm_int_layer_norm_int8: shift outside [0, 62]");
  return LayerNorm(pool, x, gamma, beta, Rescale{multiplier.typed_data(), shift.typed_data()}, y->typed_data(), eps);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntLayerNorm, LayerNormImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntLayerNormInt8, LayerNormInt8Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Attr<int64_t>("eps"));
