"""The host helpers' native library: SHA-256 of many rows (``ops/_native/row_hash.cc``) and exact
quantization of float input (``ops/_native/host_quantize.cc``), plain C functions for ctypes.

They come from the CPU kernels' library where it runs (it is built with both sources), else from
these two sources built alone, once per source, without the kernels' AVX-512 flags
(`aivm_jax._native_build`). Without a C++ compiler or a writable directory there is none, and
the callers use their Python paths. Each caller checks a native function against its Python
path before using it.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from aivm_jax._native_build import build_directories, build_library

__all__ = ["HOST_SOURCES", "host_library"]

_NATIVE = Path(__file__).parent.parent / "ops" / "_native"
HOST_SOURCES = (_NATIVE / "row_hash.cc", _NATIVE / "host_quantize.cc")
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off")


@functools.cache
def host_library() -> ctypes.CDLL | None:
    """The kernels' library where it loads, else the host sources built alone; None where neither
    is available (no compiler, no writable directory, a failed build)."""
    from aivm_jax.ops._vnni import native_library

    library = native_library()
    if library is not None:
        return library
    try:
        return ctypes.CDLL(
            str(build_library("aivm_host", HOST_SOURCES, CXX_FLAGS, build_directories(_NATIVE)))
        )
    except (RuntimeError, OSError):
        return None
