"""Keccak-256 (Ethereum's, not NIST SHA3-256): the one hash of every dispute commitment.

`keccak256` is ``eth_utils.keccak``; where the ``sha3`` module (safe-pysha3) imports,
its C Keccak is used instead (about 1 us a call against 7 us), and the two give the
same digests (`tests/disputes/test_merkle.py` holds them equal).

**Batched.** Commitments hash thousands of short independent messages; one Python call
each costs more than the hash. ``_native/keccak.cc`` hashes many messages in one call,
four at a time in the lanes of a 256-bit vector (AVX2 where the CPU has it), and also
builds whole leaf sets and Merkle trees (`aivm_jax.disputes._merkle`, ``_leaves``,
``_trace`` use it). It is compiled once per source on first use when a C++ compiler
(``$CXX`` or ``g++``) is on the PATH, and loaded by ctypes; where it cannot be,
`native_library` is None and every caller takes its pure-Python path, which gives the
same bytes (``tests/disputes/test_keccak_native.py``). ``AIVM_KECCAK=python`` turns the
native path off.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from aivm_jax._native_build import build_directories, build_library

__all__ = [
    "build_native",
    "keccak256",
    "keccak256_batch",
    "keccak256_reference",
    "native_library",
    "native_status",
]


def keccak256_reference(data: bytes) -> bytes:
    """``keccak256(data)`` through ``eth_utils`` (the chain extra): 32 bytes."""
    from eth_utils import keccak

    return keccak(data)


def _fast() -> Callable[[bytes], bytes]:
    try:
        import sha3  # safe-pysha3
    except ImportError:
        try:
            from eth_hash.auto import keccak
        except ImportError:  # pragma: no cover - the chain extra brings eth-hash
            from aivm_jax._errors import CommitmentError

            def missing(data: bytes) -> bytes:
                raise CommitmentError(
                    "dispute commitments need Keccak-256: install the chain extra "
                    "(pip install 'aivm_jax[chain]')"
                )

            return missing
        return keccak
    new = sha3.keccak_256
    return lambda data: new(data).digest()


keccak256: Callable[[bytes], bytes] = _fast()
"""``keccak256(data: bytes) -> bytes`` (32 bytes), the fastest Keccak-256 importable here."""


SOURCE = Path(__file__).with_name("_native") / "keccak.cc"
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")


def _build_dirs() -> list[Path]:
    """Where a built library may live: beside the source, then the user's cache."""
    return build_directories(SOURCE.parent)


def build_native() -> Path:
    """Compile ``_native/keccak.cc`` unless a library of this source exists; returns its path
    (`aivm_jax._native_build.build_library`).

    Raises:
      RuntimeError: no C++ compiler, no writable build directory, or the compile failed.
    """
    return build_library("aivm_keccak", [SOURCE], CXX_FLAGS, _build_dirs())


_SIZE, _U64, _PTR = ctypes.c_size_t, ctypes.c_uint64, ctypes.c_void_p
_SIGNATURES = {
    "aivm_keccak_threads": [ctypes.c_int],
    "aivm_keccak256_batch": [_SIZE, _PTR, _PTR, _PTR],
    "aivm_merkle_levels": [_SIZE, _PTR, _PTR],
    "aivm_slice_leaves": [_PTR, _U64, _PTR, _SIZE, _SIZE, _PTR],
    "aivm_trace": [_SIZE, _SIZE, _PTR, _PTR, _PTR, _PTR, _PTR],
}


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("AIVM_KECCAK", "auto") == "python":
        return None, "off: AIVM_KECCAK=python"
    try:
        path = build_native()
        library = ctypes.CDLL(str(path))
    except (RuntimeError, OSError) as error:
        return None, f"unavailable: {error}"
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, None
    library.aivm_keccak_threads.restype = ctypes.c_int
    return library, f"native ({path.name})"


def native_library() -> ctypes.CDLL | None:
    """The loaded batched-Keccak library, or None where it cannot be built or loaded here
    (`native_status` says why); callers then take their pure-Python path."""
    return _load()[0]


def native_status() -> str:
    """One line: ``native (library)`` where the batched Keccak runs, else why not."""
    return _load()[1]


def keccak256_batch(messages: Sequence[bytes]) -> list[bytes]:
    """``[keccak256(m) for m in messages]`` (32 bytes each), in one native call where the
    library loads."""
    library = native_library()
    if library is None or not messages:
        return [keccak256(m) for m in messages]
    n = len(messages)
    offsets = (ctypes.c_uint64 * (n + 1))(0, *itertools.accumulate(map(len, messages)))
    out = ctypes.create_string_buffer(32 * n)
    library.aivm_keccak256_batch(n, b"".join(messages), offsets, out)
    raw = out.raw
    return [raw[k : k + 32] for k in range(0, 32 * n, 32)]
