// The opset's integer softmax (base 2, masked, optionally causal) as an XLA FFI custom call.
//
// Per row of x (int32 scores over Tk keys), exactly as aivm_jax/ops/reference.py::softmax:
//   kept j: mask[b, j] != 0 and, if causal, j <= q + (Tk - Tq) for query q;
//   m = max of the kept scores; d = m - x_j in [0, 2**32) (uint32, exact);
//   e_j = table[d mod 2**k] >> min(d >> k, 31) (int32, arithmetic shift), 0 where not kept;
//   S = sum e_j (int64); p_j = (e_j * (2**62 div S) + 2**(61 - out_bits)) >> (62 - out_bits), 0 if S = 0.
// All integer; rows are independent, so the thread split cannot change a bit.
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

thread_local aivm::Scratch e_scratch;

void softmax_row(const int32_t* x, const int8_t* mask, int64_t tk, int64_t last_key, const int32_t* table,
                 int64_t k, int64_t out_bits, int32_t* out) {
  const int64_t keys = std::min<int64_t>(tk, last_key + 1);  // causal: keys [0, keys) may be kept
  int32_t row_max = INT32_MIN;
  bool any = false;
  for (int64_t j = 0; j < keys; ++j)
    if (mask[j] != 0) row_max = std::max(row_max, x[j]), any = true;
  std::memset(out, 0, sizeof(int32_t) * tk);
  if (!any) return;
  int32_t* e = reinterpret_cast<int32_t*>(e_scratch.get(sizeof(int32_t) * keys));
  const uint32_t low = (uint32_t{1} << k) - 1;
  int64_t total = 0;
  for (int64_t j = 0; j < keys; ++j) {
    const uint32_t d = static_cast<uint32_t>(row_max) - static_cast<uint32_t>(x[j]);
    const int32_t whole = static_cast<int32_t>(std::min<uint32_t>(d >> k, 31));
    const int32_t value = mask[j] != 0 ? table[d & low] >> whole : 0;
    e[j] = value;
    total += value;
  }
  if (total <= 0) return;
  const int64_t inverse = (int64_t{1} << 62) / total;
  const uint64_t half = uint64_t{1} << (61 - out_bits);
  for (int64_t j = 0; j < keys; ++j) {  // int64 wrap-around as in the JAX lowering
    const uint64_t product = static_cast<uint64_t>(static_cast<int64_t>(e[j])) * static_cast<uint64_t>(inverse);
    out[j] = static_cast<int32_t>(static_cast<int64_t>(product + half) >> (62 - out_bits));
  }
}

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
      softmax_row(xs + r * tk, ms + b * tk, tk, last_key, table.typed_data(), k, out_bits, ys + r * tk);
    }
  };
  const int64_t helpers = rows * tk < (int64_t{1} << 16) ? 0 : std::max<int64_t>(1, pool.num_threads()) - 1;
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
