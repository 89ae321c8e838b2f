"""SHA-256 of many messages that share one layout, in one call.

Message ``i`` is the concatenation of ``parts``, each ``(data, size, stride)``:
``size`` bytes of the uint8 array ``data`` from byte ``i * stride`` (stride 0:
the same bytes in every message, such as a prefix). Where the CPU has the SHA
extensions, all messages go to ``ops/_native/row_hash.cc`` in one native call:
from the CPU kernels' library where it runs, else from that one source built
alone without the kernels' AVX-512 flags (an AVX2 machine with SHA-NI; built on
first use with ``$CXX`` or ``g++``, kept beside the sources or in the user's
cache as the kernels are). Without either, or for fewer than
`NATIVE_MIN_MESSAGES` messages (where the ctypes call costs more than it
saves), hashlib hashes them one by one. The tests hold the two equal byte for
byte, and a native function that disagrees with hashlib on any padding case is
never used.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["NATIVE_MIN_MESSAGES", "Part", "native_available", "native_rows", "sha256_many", "shared"]

Part = tuple[np.ndarray, int, int]  # (uint8 data, bytes per message, stride)

NATIVE_MIN_MESSAGES = 32  # below it hashlib is faster (ctypes costs ~5 us a call); 2x at 256


def shared(data: bytes) -> Part:
    """A part every message holds the same (stride 0)."""
    return np.frombuffer(data, np.uint8), len(data), 0


SOURCE = Path(__file__).parent.parent / "ops" / "_native" / "row_hash.cc"
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC")


def _library_name() -> str:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CXX_FLAGS).encode()).hexdigest()[:16]
    return f"aivm_sha256-{key}.so"


def _build_dirs() -> list[Path]:
    """Where the library may live: beside the sources, then the user's cache (as the kernels)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aivm_jax"
    return [SOURCE.parent / "build", cache]


def _standalone_library() -> ctypes.CDLL | None:
    """``row_hash.cc`` alone, built (once per source) without the kernels' AVX-512 flags; None
    where no C++ compiler or no writable directory is found or the build fails."""
    name = _library_name()
    found = next((d / name for d in _build_dirs() if (d / name).is_file()), None)
    if found is None:
        compiler = shutil.which(os.environ.get("CXX", "g++"))
        if compiler is None:
            return None
        for directory in _build_dirs():
            try:
                directory.mkdir(parents=True, exist_ok=True)
                with open(directory / ".lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    target = directory / name
                    if not target.is_file():
                        fd, partial = tempfile.mkstemp(dir=directory, suffix=".so.partial")
                        os.close(fd)
                        command = [compiler, *CXX_FLAGS, "-o", partial, str(SOURCE)]
                        if subprocess.run(command, capture_output=True).returncode != 0:
                            os.unlink(partial)
                            return None
                        os.replace(partial, target)
                        for stale in directory.glob("aivm_sha256-*.so"):  # builds of older sources
                            if stale != target:
                                stale.unlink(missing_ok=True)
                found = target
                break
            except OSError:
                continue
    try:
        return ctypes.CDLL(str(found)) if found is not None else None
    except OSError:
        return None


@functools.cache
def _native() -> Callable | None:
    """``aivm_sha256_rows`` where the CPU has the SHA extensions, from the kernels' library where
    it loads, else from `_standalone_library`, if the function passes `_agrees_with_hashlib`;
    else None."""
    from aivm_jax.ops._vnni import native_library

    library = native_library() or _standalone_library()
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
