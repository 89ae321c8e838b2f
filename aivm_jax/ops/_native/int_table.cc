// A table lookup followed by its requantize, as an XLA FFI custom call (a transformer's GELU):
//   y = requantize(table(x, values), multiplier, shift) to int8, per channel (last axis),
// exactly as aivm_jax/ops/reference.py::table then ::requantize: v = values[x + 128] (int32),
// y = saturate_int8(floor((v M + half) / 2**s)) (rescale.h). Sixteen elements at a time: the
// 256-entry table is held in registers and looked up with permutes (a gather is slower), then
// two int64 rescales. All integer; elements are independent, so the thread split cannot change a bit.
#include <immintrin.h>

#include <cstdint>

#include "parallel.h"
#include "rescale.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error TableRequantizeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S32> values,
                               ffi::Buffer<ffi::S32> multiplier, ffi::Buffer<ffi::S32> shift,
                               ffi::ResultBuffer<ffi::S8> y) {
  const auto xd = x.dimensions();
  const int64_t n = xd.size() == 0 ? 1 : xd.back();
  if (values.element_count() != 256 || multiplier.element_count() != n || shift.element_count() != n || n < 1)
    return ffi::Error::InvalidArgument("aivm_int_table_requantize: bad shapes");
  const int32_t* shifts = shift.typed_data();
  if (!aivm::shifts_in_range(shifts, n))
    return ffi::Error::InvalidArgument("aivm_int_table_requantize: shift outside [0, 62]");
  const int64_t rows = x.element_count() / n;
  const int8_t* xs = x.typed_data();
  const int32_t *table = values.typed_data(), *ms = multiplier.typed_data();
  int8_t* ys = y->typed_data();
  constexpr int64_t kElementsPerTask = 1 << 14;
  const int64_t rows_per_task = std::max<int64_t>(1, kElementsPerTask / n);
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
  // The table in sixteen registers; VPERMI2D picks one of 32 entries by the low five bits of an
  // index, and the top three bits choose among the eight results.
  __m512i parts[16];
  for (int64_t i = 0; i < 16; ++i) parts[i] = _mm512_loadu_si512(table + 16 * i);
  auto body = [&](int64_t t) {
    const __m512i offset = _mm512_set1_epi32(128);
    for (int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r) {
      const int8_t* row = xs + r * n;
      int8_t* out = ys + r * n;
      for (int64_t c = 0; c < n; c += 16) {
        const __mmask16 live = aivm::lanes16_left(n - c);
        const __m512i index = _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(live, row + c)), offset);
        __m512i pick[8];
        for (int64_t i = 0; i < 8; ++i) pick[i] = _mm512_permutex2var_epi32(parts[2 * i], index, parts[2 * i + 1]);
        const __mmask16 bit5 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(32));
        const __mmask16 bit6 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(64));
        const __mmask16 bit7 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(128));
        for (int64_t i = 0; i < 4; ++i) pick[i] = _mm512_mask_blend_epi32(bit5, pick[2 * i], pick[2 * i + 1]);
        for (int64_t i = 0; i < 2; ++i) pick[i] = _mm512_mask_blend_epi32(bit6, pick[2 * i], pick[2 * i + 1]);
        const __m512i v = _mm512_mask_blend_epi32(bit7, pick[0], pick[1]);
        for (int64_t h = 0; h < 2; ++h) {
          const int64_t col = c + 8 * h;
          if (col >= n) break;
          const __mmask8 lanes = aivm::lanes_left(n - col);
          const __m512i wide = _mm512_cvtepi32_epi64(h == 0 ? _mm512_castsi512_si256(v) : _mm512_extracti64x4_epi64(v, 1));
          const __m512i z = aivm::rescale8(wide, aivm::load8_epi64(ms + col, lanes), aivm::load8_epi64(shifts + col, lanes));
          aivm::store8_int8_saturated(out + col, lanes, z);
        }
      }
    }
  };
  const int64_t helpers = aivm::helpers_for(pool, rows * n, int64_t{1} << 20);
  aivm::parallel_for(pool, tasks, helpers, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntTableRequantize, TableRequantizeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>());
