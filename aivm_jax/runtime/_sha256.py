"""SHA-256 of many messages that share one layout, in one call.

Message ``i`` is the concatenation of ``parts``, each ``(data, size, stride)``:
``size`` bytes of the uint8 array ``data`` from byte ``i * stride`` (stride 0:
the same bytes in every message, such as a prefix). Where the CPU has the SHA
extensions, all messages go to ``ops/_native/row_hash.cc`` in one native call
(`aivm_jax.runtime._native_host`: from the CPU kernels' library where it runs,
else from the host sources built alone without the kernels' AVX-512 flags, as
on an AVX2 machine with SHA-NI). Without either, or for fewer than
`NATIVE_MIN_MESSAGES` messages (where the ctypes call costs more than it
saves), hashlib hashes them one by one. The tests hold the two equal byte for
byte, and a native function that disagrees with hashlib on any padding case is
never used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from aivm_jax.runtime._native_host import host_library

__all__ = ["NATIVE_MIN_MESSAGES", "Part", "native_available", "native_rows", "sha256_many", "shared"]

Part = tuple[np.ndarray, int, int]  # (uint8 data, bytes per message, stride)

NATIVE_MIN_MESSAGES = 32  # below it hashlib is faster (ctypes costs ~5 us a call); 2x at 256


def shared(data: bytes) -> Part:
    """A part every message holds the same (stride 0)."""
    return np.frombuffer(data, np.uint8), len(data), 0


@functools.cache
def _native() -> Callable | None:
    """``aivm_sha256_rows`` where the CPU has the SHA extensions, from the kernels' library where
    it loads, else from the host sources built alone (`host_library`), if the function passes
    `_agrees_with_hashlib`; else None."""
    library = host_library()
    if library is None or not library.aivm_sha256_supported():
        return None
    function = library.aivm_sha256_rows
    function.restype = None
    function.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 5
    return function if _agrees_with_hashlib(function) else None


def _agrees_with_hashlib(function: Callable) -> bool:
    """Whether ``function`` hashes messages of every length from 0 to 130 bytes (each padding
    case, one and two blocks) as hashlib does; warns if not. A hash is consensus data, so a
    native path that disagrees here is never used."""
    probe = (np.arange(3 * 131, dtype=np.uint32) * 37).astype(np.uint8)
    for size in range(131):  # 3 messages of `size` bytes each
        digests, _ = _native_many([(probe, size, 131)], 3, False, function)
        want = b"".join(hashlib.sha256(probe[i * 131 : i * 131 + size].tobytes()).digest() for i in range(3))
        if digests != want:
            warnings.warn(
                "the native SHA-256 disagrees with hashlib here; using hashlib", RuntimeWarning, stacklevel=2
            )
            return False
    return True


def native_rows() -> Callable:
    """``aivm_sha256_rows(count, parts, data, sizes, strides, digests, hex)`` (see ``row_hash.cc``).

    Raises:
      RuntimeError: it does not run here (`native_available`).
    """
    function = _native()
    if function is None:
        raise RuntimeError("the native SHA-256 path does not run here")
    return function


def native_available() -> bool:
    """Whether the SHA-extension path runs here."""
    return _native() is not None


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _native_many(
    parts: Sequence[Part], count: int, hex_strings: bool, function: Callable | None = None
) -> tuple[bytes, list[str] | None]:
    n = len(parts)
    data = (ctypes.c_void_p * n)(*[_address(p[0]) for p in parts])
    sizes = (ctypes.c_int64 * n)(*[p[1] for p in parts])
    strides = (ctypes.c_int64 * n)(*[p[2] for p in parts])
    digests = ctypes.create_string_buffer(32 * count)
    hex_digits = ctypes.create_string_buffer(66 * count) if hex_strings else None
    (function or _native())(count, n, data, sizes, strides, digests, hex_digits)
    if hex_digits is None:
        return digests.raw, None
    text = hex_digits.raw.decode("ascii")
    return digests.raw, [text[i : i + 66] for i in range(0, 66 * count, 66)]


def _hashlib_many(parts: Sequence[Part], count: int) -> bytes:
    base = hashlib.sha256()
    while parts and parts[0][2] == 0:  # a shared prefix is hashed once
        base.update(parts[0][0][: parts[0][1]].tobytes())
        parts = parts[1:]
    views = [(memoryview(data), size, stride) for data, size, stride in parts]
    digests = []
    for i in range(count):
        h = base.copy()
        for data, size, stride in views:
            h.update(data[i * stride : i * stride + size])
        digests.append(h.digest())
    return b"".join(digests)


def sha256_many(
    parts: Sequence[Part], count: int, *, native: bool | None = None, hex_strings: bool = False
) -> tuple[bytes, list[str] | None]:
    """The ``count`` digests concatenated (32 bytes each), and with ``hex_strings`` their
    ``0x`` + 64-hex-digit strings (else None). ``native``: None picks the SHA-extension path
    where it runs and ``count >= NATIVE_MIN_MESSAGES``; True requires it (RuntimeError where
    it does not run); False uses hashlib."""
    if native is None:
        native = count >= NATIVE_MIN_MESSAGES and native_available()
    if native:
        if not native_available():
            raise RuntimeError("the native SHA-256 path does not run here")
        return _native_many(parts, count, hex_strings)
    blob = _hashlib_many(parts, count)
    strings = ["0x" + blob[i : i + 32].hex() for i in range(0, len(blob), 32)] if hex_strings else None
    return blob, strings
