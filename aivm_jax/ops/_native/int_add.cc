// The opset's `add` (two tensors at different scales, one half-up rescale) as an XLA FFI custom call.
//
// Per element, with per-channel (last axis) multipliers and shift, exactly as
// aivm_jax/ops/reference.py::add:
//   z = saturate(floor((x Mx + y My + half) / 2**s)), half = 2**(s-1) if s > 0 else 0,
// saturated to [low, high] (int8 or int32 bounds). |x|, |y| <= 2**31 and |Mx|, |My| <= 2**30,
// so each product fits in 2**61 and the sum in int64; the 32 x 32 -> 64 products are exact and
// the arithmetic right shift is the floor. All integer; elements are independent.
//
// Being a custom call, its result is materialized once: XLA would otherwise fuse a residual
// stream's adds into every reader and recompute the earlier ones, layer after layer.
#include <cstdint>

#include "parallel.h"
#include "rescale.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error AddImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> x, ffi::Buffer<ffi::S32> y,
                   ffi::Buffer<ffi::S32> x_multiplier, ffi::Buffer<ffi::S32> y_multiplier,
                   ffi::Buffer<ffi::S32> shift, ffi::ResultBuffer<ffi::S32> z, int64_t low, int64_t high) {
  const auto xd = x.dimensions();
  const int64_t n = xd.size() == 0 ? 1 : xd.back();
  if (y.element_count() != x.element_count() || x_multiplier.element_count() != n ||
      y_multiplier.element_count() != n || shift.element_count() != n || n < 1 || low > high)
    return ffi::Error::InvalidArgument("aivm_int_add: bad shapes or bounds");
  const int32_t* shifts = shift.typed_data();
  if (!aivm::shifts_in_range(shifts, n))
    return ffi::Error::InvalidArgument("aivm_int_add: shift outside [0, 62]");
  const int64_t rows = x.element_count() / n;
  const int32_t *xs = x.typed_data(), *ys = y.typed_data();
  const int32_t *mx = x_multiplier.typed_data(), *my = y_multiplier.typed_data();
  int32_t* zs = z->typed_data();
  constexpr int64_t kElementsPerTask = 1 << 14;
  const int64_t rows_per_task = std::max<int64_t>(1, kElementsPerTask / n);
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
  auto body = [&](int64_t t) {
    const __m512i lo = _mm512_set1_epi64(low), hi = _mm512_set1_epi64(high);
    for (int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r) {
      for (int64_t c = 0; c < n; c += 8) {
        const __mmask8 lanes = aivm::lanes_left(n - c);
        const int64_t at = r * n + c;
        auto wide = [lanes](const int32_t* p) { return _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, p)); };
        const __m512i s = wide(shifts + c);
        // half = 2**(s-1) where s > 0: (1 << s) >> 1 is 0 for s = 0.
        const __m512i half = _mm512_srli_epi64(_mm512_sllv_epi64(_mm512_set1_epi64(1), s), 1);
        __m512i total = _mm512_add_epi64(_mm512_mul_epi32(wide(xs + at), wide(mx + c)),
                                         _mm512_mul_epi32(wide(ys + at), wide(my + c)));
        total = _mm512_srav_epi64(_mm512_add_epi64(total, half), s);
        total = _mm512_min_epi64(_mm512_max_epi64(total, lo), hi);
        aivm::store8_int32_truncated(zs + at, lanes, total);
      }
    }
  };
  const int64_t helpers = aivm::helpers_for(pool, x.element_count(), int64_t{1} << 16);
  aivm::parallel_for(pool, tasks, helpers, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntAdd, AddImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("low")
                                  .Attr<int64_t>("high"));
