// A self-test of aivm::parallel_for (parallel.h), the loop every kernel here splits its work with:
// runs task i for work[i] spin iterations and reports how often each task ran and whether the
// calling thread ran it. Any helper count may be asked for, more than the pool has threads, so
// that queued helpers start late and their ranges are taken from the back by the others.
// Integer bookkeeping only; no operand of an op passes through it.
#include <atomic>
#include <cstdint>
#include <thread>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error ParallelForCheckImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> work, ffi::ResultBuffer<ffi::S32> runs,
                                ffi::ResultBuffer<ffi::S32> by_caller, int64_t helpers) {
  const int64_t n = work.element_count();
  if (helpers < 0 || helpers > 64) return ffi::Error::InvalidArgument("aivm_parallel_for_check: helpers in [0, 64]");
  const int32_t* spins = work.typed_data();
  int32_t* count = runs->typed_data();
  int32_t* caller = by_caller->typed_data();
  for (int64_t i = 0; i < n; ++i) count[i] = caller[i] = 0;
  const std::thread::id self = std::this_thread::get_id();
  auto body = [&](int64_t i) {
    for (int32_t s = 0; s < spins[i]; ++s) _mm_pause();
    __atomic_fetch_add(count + i, 1, __ATOMIC_RELAXED);
    if (std::this_thread::get_id() == self) caller[i] = 1;
  };
  aivm::parallel_for(pool, n, helpers, body);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AivmParallelForCheck, ParallelForCheckImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("helpers"));
