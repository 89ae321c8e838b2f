// Exact host quantization of float input rows with a stored scale: the native twin of
// aivm_jax.runtime._host.quantize_to_scale's NumPy path, element by element in the same steps.
//
//   q = saturate(floor(v / s + 1/2)),  s = mantissa * 2^exponent  (exact in float64)
//
// The float64 estimate floor(v / s + 0.5) is corrected against the exact bounds
// (q - 1/2) s <= v < (q + 1/2) s, which float64 computes without error (|2q +- 1| * m < 2^53),
// with at most four passes, then saturated to the output type. +-inf saturate; NaN is refused
// (the function returns 1 and the output is unspecified). Every operation is an exactly rounded
// IEEE-754 double operation (no fused multiply-add changes an exact product), so the result is
// the same bits on every machine; the tests hold it equal to the NumPy path.
#include <cmath>
#include <cstdint>

namespace {

template <typename In, typename Out>
int quantize(const In* src, int64_t n, double step, double half, double lo, double hi, Out* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(src[i]);
    if (std::isnan(v)) return 1;
    double q = std::floor(v / step + 0.5);
    q = q < lo - 1.0 ? lo - 1.0 : (q > hi + 1.0 ? hi + 1.0 : q);
    for (int pass = 0; pass < 4; ++pass) {
      const double low = (2.0 * q - 1.0) * half;
      const double high = (2.0 * q + 1.0) * half;
      const bool down = v < low, up = v >= high;
      if (!down && !up) break;
      q = q - (down ? 1.0 : 0.0) + (up ? 1.0 : 0.0);
      q = q < lo - 1.0 ? lo - 1.0 : (q > hi + 1.0 ? hi + 1.0 : q);
    }
    q = q < lo ? lo : (q > hi ? hi : q);
    dst[i] = static_cast<Out>(q);
  }
  return 0;
}

template <typename In>
int to_kind(const In* src, int64_t n, double step, double half, void* dst, int64_t dst_kind) {
  if (dst_kind == 0) return quantize(src, n, step, half, -128.0, 127.0, static_cast<int8_t*>(dst));
  return quantize(src, n, step, half, -2147483648.0, 2147483647.0, static_cast<int32_t*>(dst));
}

}  // namespace

extern "C" {

// src_kind: 0 float32, 1 float64. dst_kind: 0 int8, 1 int32. Returns 0, or 1 if a value is NaN.
int aivm_quantize_to_scale(const void* src, int64_t src_kind, int64_t n, int64_t mantissa,
                           int64_t exponent, void* dst, int64_t dst_kind) {
  const double step = std::ldexp(static_cast<double>(mantissa), static_cast<int>(exponent));
  const double half = std::ldexp(static_cast<double>(mantissa), static_cast<int>(exponent) - 1);
  if (src_kind == 0) return to_kind(static_cast<const float*>(src), n, step, half, dst, dst_kind);
  return to_kind(static_cast<const double*>(src), n, step, half, dst, dst_kind);
}

}  // extern "C"
