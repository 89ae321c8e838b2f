// The opset's integer softmax (base 2, masked, optionally causal) as an XLA FFI custom call.
//
// Per row of x (int32 scores over Tk keys), exactly as aivm_jax/ops/reference.py::softmax, with
// key j kept when mask[b, j] != 0 and, if causal, j <= q + (Tk - Tq) for query q; the row itself
// is int_softmax_row.h.
// All integer; rows are independent, so the thread split cannot change a bit.
#include <cstdint>

#include "int_softmax_row.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

thread_local aivm::Scratch e_scratch;

ffi::Error SoftmaxImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> x, ffi::Buffer<ffi::S8> mask,
                       ffi::Buffer<ffi::S32> table, ffi::ResultBuffer<ffi::S32> y, bool causal, int64_t out_bits) {
  const auto xd = x.dimensions(), md = mask.dimensions();
  if (xd.size() < 2 || md.size() != 2 || md[0] != xd[0] || md[1] != xd.back() || out_bits < 1 || out_bits > 61)
    return ffi::Error::InvalidArgument("aivm_int_softmax: bad shapes or out_bits");
  const int64_t entries = table.element_count();
  int64_t k = 0;
  while ((int64_t{1} << k) < entries) ++k;
  if ((int64_t{1} << k) != entries || k > 31)
    return ffi::Error::InvalidArgument("aivm_int_softmax: the table size must be a power of two");
  const int64_t batch = xd[0], tk = xd.back(), tq = xd[xd.size() - 2];
  int64_t rows_per_batch = 1;
  for (size_t i = 1; i + 1 < xd.size(); ++i) rows_per_batch *= xd[i];
  const int64_t rows = batch * rows_per_batch;
  const int32_t* xs = x.typed_data();
  const int8_t* ms = mask.typed_data();
  int32_t* ys = y->typed_data();
  constexpr int64_t kRowsPerTask = 64;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  auto body = [&](int64_t t) {
    for (int64_t r = t * kRowsPerTask; r < std::min(rows, (t + 1) * kRowsPerTask); ++r) {
      const int64_t b = r / rows_per_batch, q = r % tq;
      const int64_t last_key = causal ? q + (tk - tq) : tk - 1;
      int32_t* e = reinterpret_cast<int32_t*>(e_scratch.get(sizeof(int32_t) * tk));
      aivm::softmax_row(xs + r * tk, ms + b * tk, tk, last_key, table.typed_data(), k, out_bits, e, ys + r * tk);
    }
  };
  const int64_t helpers = aivm::helpers_for(pool, rows * tk, int64_t{1} << 16);
  aivm::parallel_for(pool, tasks, helpers, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmIntSoftmax, SoftmaxImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("out_bits"));
