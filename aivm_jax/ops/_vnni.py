"""The project's CPU kernels (``_native/*.cc``): build, load, register with XLA.

C++ compiled once per sources, compiler flags and jaxlib version into one
shared library, registered as XLA FFI custom calls (CPU only):

* ``aivm_int8_matmul_vnni``: the exact int8 GEMM (``int8_gemm_vnni.cc``; its
  exactness argument heads the source), and ``aivm_int32_int8_matmul_vnni``,
  int32 x int8 by byte planes of the int32 operand;
* ``aivm_int8_dense_vnni`` / ``aivm_int8_conv_dense_vnni``: a matmul or conv2d
  (implicit im2col) with its bias_add, requantize and relu in one pass, and
  ``aivm_int8_dense_packed_vnni``, the dense one with constant weights packed
  ahead of time (``_gemm.pack_weights``);
* ``aivm_int8_pool``: int8 max and average pooling (``int8_pool.cc``);
* ``aivm_int_softmax``: the integer softmax, row by row (``int_softmax.cc``);
* ``aivm_int_layer_norm``: the integer layer norm, row by row, dividing by a
  multiplier instead of a divide instruction (``int_layer_norm.cc``), and
  ``aivm_int_layer_norm_int8``, the same followed by its requantize to int8;
* ``aivm_int_add``: ``add``, two tensors joined with one half-up rescale
  (``int_add.cc``);
* ``aivm_int_attention``: attention's ``batch_matmul -> requantize -> softmax
  -> batch_matmul`` chain, one query row at a time (``int_attention.cc``), and
  ``aivm_int_attention_int8``, the same followed by its requantize to int8;
* ``aivm_int_table_requantize``: ``table`` then ``requantize`` to int8 (a
  transformer's GELU, ``int_table.cc``);
* ``aivm_sha256_rows`` (a plain C function, not an FFI target): the SHA-256
  row hashes of a result on the SHA extensions (``row_hash.cc``), used by
  ``runtime/_hashing.py`` where the CPU has them (`native_library`);
* ``aivm_parallel_for_check``: a self-test of the parallel loop all of them use
  (``parallel_check.cc``, `parallel_for_check`); no op runs through it.

The library is built by `main` (``scripts/_venv.sh`` runs it at install) or on
first use, when a C++ compiler (``$CXX`` or ``g++``) is on the PATH. It is used
only where the CPU has AVX-512 F, BW, DQ and VNNI. Where it cannot be built or
run, `kernel_status` says why and the ops stay on XLA's own lowering: every
kernel computes the opset's integers exactly, so the choice never changes a
bit, only the speed. ``AIVM_INT8_GEMM=xla`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from aivm_jax._native_build import build_directories, build_library

__all__ = [
    "CONV_TARGET_NAME",
    "DENSE_PACKED_TARGET_NAME",
    "DENSE_TARGET_NAME",
    "INT32_TARGET_NAME",
    "POOL_TARGET_NAME",
    "ADD_TARGET_NAME",
    "ATTENTION_INT8_TARGET_NAME",
    "ATTENTION_TARGET_NAME",
    "LAYER_NORM_INT8_TARGET_NAME",
    "TABLE_REQUANTIZE_TARGET_NAME",
    "LAYER_NORM_TARGET_NAME",
    "PARALLEL_CHECK_TARGET_NAME",
    "SOFTMAX_TARGET_NAME",
    "TARGET_NAME",
    "build_kernel",
    "kernel_status",
    "native_library",
    "on_cpu",
    "parallel_for_check",
    "register_kernel",
]

TARGET_NAME = "aivm_int8_matmul_vnni"
INT32_TARGET_NAME = "aivm_int32_int8_matmul_vnni"
DENSE_TARGET_NAME = "aivm_int8_dense_vnni"
DENSE_PACKED_TARGET_NAME = "aivm_int8_dense_packed_vnni"
CONV_TARGET_NAME = "aivm_int8_conv_dense_vnni"
POOL_TARGET_NAME = "aivm_int8_pool"
SOFTMAX_TARGET_NAME = "aivm_int_softmax"
LAYER_NORM_TARGET_NAME = "aivm_int_layer_norm"
ADD_TARGET_NAME = "aivm_int_add"
ATTENTION_TARGET_NAME = "aivm_int_attention"
ATTENTION_INT8_TARGET_NAME = "aivm_int_attention_int8"
LAYER_NORM_INT8_TARGET_NAME = "aivm_int_layer_norm_int8"
TABLE_REQUANTIZE_TARGET_NAME = "aivm_int_table_requantize"
PARALLEL_CHECK_TARGET_NAME = "aivm_parallel_for_check"
SOURCES = tuple(
    Path(__file__).with_name("_native") / name
    for name in (
        "int8_gemm_vnni.cc",
        "int8_pool.cc",
        "int_softmax.cc",
        "int_layer_norm.cc",
        "int_add.cc",
        "int_attention.cc",
        "int_table.cc",
        "parallel_check.cc",
        "row_hash.cc",
        "host_quantize.cc",
    )
)
HEADERS = tuple(
    Path(__file__).with_name("_native") / name for name in ("parallel.h", "int_softmax_row.h", "rescale.h")
)

CXX_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512dq",
    "-mavx512vnni",
)


def _build_dirs() -> list[Path]:
    """Where a built library may live: beside the source, then the user's cache."""
    return build_directories(SOURCES[0].parent)


def _name_args() -> dict:
    import jaxlib

    return {"depends": HEADERS, "key": jaxlib.__version__.encode()}


def build_kernel(verbose: bool = False) -> Path:
    """Compile the kernels if no library for these sources exists yet; returns its path
    (`aivm_jax._native_build.build_library`: under a file lock, renamed into place).

    Raises:
      RuntimeError: no C++ compiler, no writable build directory, or the compile failed.
    """
    return build_library(
        "aivm_cpu_kernels",
        SOURCES,
        CXX_FLAGS,
        _build_dirs(),
        include_dirs=[jax.ffi.include_dir()],
        note="compiling the CPU kernels into {target}" if verbose else None,
        **_name_args(),
    )


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("AIVM_INT8_GEMM", "auto") == "xla":
        return None, "off: AIVM_INT8_GEMM=xla"
    try:
        path = build_kernel(verbose=True)
        library = ctypes.CDLL(str(path))
    except (RuntimeError, OSError) as error:
        return None, f"unavailable: {error}"
    if not library.aivm_int8_matmul_vnni_supported():
        return None, "unavailable: this CPU lacks AVX-512 F, BW, DQ or VNNI"
    return library, f"avx512-vnni ({path.name})"


@functools.cache
def register_kernel() -> bool:
    """Register the FFI target once per process; False where the kernel cannot be used here."""
    library, _ = _load()
    if library is None:
        return False
    for name, handler in [
        (TARGET_NAME, library.AivmInt8MatmulVnni),
        (INT32_TARGET_NAME, library.AivmInt32Int8MatmulVnni),
        (DENSE_TARGET_NAME, library.AivmInt8DenseVnni),
        (DENSE_PACKED_TARGET_NAME, library.AivmInt8DensePackedVnni),
        (CONV_TARGET_NAME, library.AivmInt8ConvDenseVnni),
        (POOL_TARGET_NAME, library.AivmInt8Pool),
        (SOFTMAX_TARGET_NAME, library.AivmIntSoftmax),
        (LAYER_NORM_TARGET_NAME, library.AivmIntLayerNorm),
        (ADD_TARGET_NAME, library.AivmIntAdd),
        (ATTENTION_TARGET_NAME, library.AivmIntAttention),
        (ATTENTION_INT8_TARGET_NAME, library.AivmIntAttentionInt8),
        (LAYER_NORM_INT8_TARGET_NAME, library.AivmIntLayerNormInt8),
        (TABLE_REQUANTIZE_TARGET_NAME, library.AivmIntTableRequantize),
        (PARALLEL_CHECK_TARGET_NAME, library.AivmParallelForCheck),
    ]:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def on_cpu(target: str, out, xla: Callable, *operands, vmap_method: str | None = None, **attrs):
    """``xla(*operands)``, lowered on CPU to the kernel ``target`` (result ``out``, attributes
    ``attrs``) where the kernels run here. Both compute the same integers."""
    if not register_kernel():
        return xla(*operands)
    from jax import lax

    def kernel(*args):
        return jax.ffi.ffi_call(target, out, vmap_method=vmap_method)(*args, **attrs)

    return lax.platform_dependent(*operands, cpu=kernel, default=xla)


def parallel_for_check(work: np.ndarray, helpers: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernels' parallel loop over ``len(work)`` tasks with ``helpers`` pool tasks
    (task ``i`` spins ``work[i]`` pauses): ``(runs, by_caller)``, int32 ``(n,)`` each, how many
    times task ``i`` ran and 1 where the calling thread ran it. Every ``runs`` must be 1.

    Raises:
      RuntimeError: the CPU kernels do not run here (`kernel_status` says why).
    """
    if not register_kernel():
        raise RuntimeError(f"the CPU kernels do not run here: {kernel_status()}")
    work = np.ascontiguousarray(work, dtype=np.int32)
    out = (jax.ShapeDtypeStruct(work.shape, np.int32),) * 2
    call = jax.ffi.ffi_call(PARALLEL_CHECK_TARGET_NAME, out)
    runs, by_caller = call(work, helpers=np.int64(helpers))
    return np.asarray(runs), np.asarray(by_caller)


def native_library() -> ctypes.CDLL | None:
    """The loaded kernels library (for its plain C functions), or None where the kernels do not
    run here (`kernel_status` says why)."""
    return _load()[0]


def kernel_status() -> str:
    """One line: ``avx512-vnni (library)`` when the CPU kernels run, else why XLA's lowering is used."""
    return _load()[1]


def main() -> None:
    """Build the kernels now (``scripts/_venv.sh`` runs this at install) and say whether they run."""
    try:
        print(f"built {build_kernel(verbose=True)}")
    except RuntimeError as error:
        print(
            f"warning: the CPU kernels were not built ({error}); XLA's lowering will be used",
            file=sys.stderr,
        )
    print(f"CPU kernels: {kernel_status()}")


if __name__ == "__main__":
    main()
