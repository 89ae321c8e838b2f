"""The process's heap: freed memory is kept for the next call instead of going back to the OS.

XLA's CPU runtime allocates every output buffer and scratch buffer of a call
with ``malloc`` and frees it afterwards. glibc's defaults give large blocks
back to the operating system (``mmap``/``munmap`` above a threshold that moves
with the program, and a heap top trimmed past 128 KiB to a few MiB), so the
next call of the same program gets fresh pages and takes a page fault on
every 4 KiB it writes. With another engine running in between (onnxruntime,
XLA's own dot) this happened on most calls: an int8 GEMM with a 2 MB output
took 96-129 us instead of 79 us, with tens to over a hundred page faults per call.

``keep_freed_heap`` sets glibc's ``M_MMAP_THRESHOLD`` to 32 MiB (its largest
value: blocks up to that size come from the heap) and ``M_TRIM_THRESHOLD`` to
1 GiB (the heap top is not given back), so the pages stay in the process and
are reused: an arena, as onnxruntime keeps one. The cost is resident memory:
the process keeps its peak heap. It is a speed setting only; no value can
change. ``import aivm_jax`` applies it unless ``AIVM_HEAP=system``; on a libc
without ``mallopt`` (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["HEAP_ENV", "heap_setting", "keep_freed_heap"]

HEAP_ENV = "AIVM_HEAP"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit hosts
_TRIM_THRESHOLD = 1 << 30

_setting = "system"


def keep_freed_heap() -> str:
    """Apply the setting (once per process, idempotent); returns `heap_setting`."""
    global _setting
    if os.environ.get(HEAP_ENV, "keep") == "system":
        _setting = "system"
        return _setting
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt in this libc, or no C library handle
        return _setting
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1:
        _setting = "keep"
    return _setting


def heap_setting() -> str:
    """``"keep"`` when freed memory is kept for reuse, ``"system"`` when the libc's defaults rule."""
    return _setting
