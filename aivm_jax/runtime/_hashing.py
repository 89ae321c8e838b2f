"""Hashes of inference results: one per batch row, and one over the whole batch.

``row_hash = SHA-256("aivm-row-v1" || model_id (32 bytes) || for each output in
order: len(name) u16 || name || dtype name || u8 rank || shape (u32 each) ||
row bytes little-endian)``.

``output_hash = SHA-256("aivm-out-v1" || model_id || batch size u64 || row
hashes in order)``. ``input_hash`` binds a request to its integer input the same
way. Hashes print as ``0x`` + 64 hex digits, a ``bytes32``.
A row hash depends only on the model and that row's outputs, so it is the
same whatever batch the row was computed in.

Row hashes are computed for all rows in one native call on the SHA extensions
where the CPU kernels run and the CPU has them (``ops/_native/row_hash.cc``),
else with hashlib row by row; the tests hold the two equal byte for byte.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["input_hash", "output_hash", "row_digests", "row_hash_table", "row_header", "row_hashes"]


def _id_bytes(model_id: str) -> bytes:
    return bytes.fromhex(model_id[2:])


def row_header(name: str, dtype: str, row_shape: Sequence[int]) -> bytes:
    """The bytes that precede one output's row data in a row hash."""
    encoded = name.encode()
    return (
        struct.pack("<H", len(encoded))
        + encoded
        + dtype.encode()
        + struct.pack(f"<B{len(row_shape)}I", len(row_shape), *row_shape)
    )


def _row_parts(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]):
    """Each row's message as parts: ``(bytes-like, bytes per row, stride)``; stride 0 for the
    bytes every row shares (the prefix and the headers of later outputs)."""
    parts = []
    for i, (name, out) in enumerate(zip(names, outputs)):
        header = row_header(name, out.dtype.name, out.shape[1:])
        shared = (b"aivm-row-v1" + _id_bytes(model_id) + header) if i == 0 else header
        parts.append((np.frombuffer(shared, np.uint8), len(shared), 0))
        little = np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        size = little.size // out.shape[0] if out.shape[0] else 0
        parts.append((little, size, size))
    return parts


def _hashlib_rows(parts, rows: int) -> bytes:
    """The row digests, concatenated, one hashlib object per row (the shared prefix hashed once)."""
    first, *rest = parts
    base = hashlib.sha256(first[0].tobytes())
    views = [(memoryview(data), size, stride) for data, size, stride in rest]
    digests = []
    for row in range(rows):
        h = base.copy()
        for data, size, stride in views:
            h.update(data[row * stride : row * stride + size])
        digests.append(h.digest())
    return b"".join(digests)


NATIVE_MIN_ROWS = 32  # below it hashlib is faster (ctypes costs 5 us a call); 2x faster at 256 rows


@functools.cache
def _native_rows() -> Callable | None:
    """``aivm_sha256_rows`` from the CPU kernels' library, or None (no library, no SHA extensions)."""
    from aivm_jax.ops._vnni import native_library

    library = native_library()
    if library is None or not library.aivm_sha256_supported():
        return None
    function = library.aivm_sha256_rows
    function.restype = None
    function.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 5
    return function


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _native_table(parts, rows: int) -> tuple[bytes, list[str]]:
    count = len(parts)
    data = (ctypes.c_void_p * count)(*[_address(p[0]) for p in parts])
    sizes = (ctypes.c_int64 * count)(*[p[1] for p in parts])
    strides = (ctypes.c_int64 * count)(*[p[2] for p in parts])
    digests = ctypes.create_string_buffer(32 * rows)
    hex_digits = ctypes.create_string_buffer(66 * rows)
    _native_rows()(rows, count, data, sizes, strides, digests, hex_digits)
    text = hex_digits.raw.decode("ascii")
    return digests.raw, [text[i : i + 66] for i in range(0, 66 * rows, 66)]


def row_hash_table(
    model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray], *, native: bool | None = None
) -> tuple[bytes, list[str]]:
    """All row hashes of a result (see `row_hashes`): the 32-byte digests concatenated, and
    the ``0x`` strings. ``native``: None picks the SHA-extension path where it runs and the
    batch has at least `NATIVE_MIN_ROWS` rows; True requires it (RuntimeError where it does
    not run); False uses hashlib."""
    rows = outputs[0].shape[0]
    parts = _row_parts(model_id, names, outputs)
    if native is None:  # a short batch is cheaper in hashlib than through ctypes
        native = rows >= NATIVE_MIN_ROWS and _native_rows() is not None
    if native:
        if _native_rows() is None:
            raise RuntimeError("the native SHA-256 row hashes do not run here")
        return _native_table(parts, rows)
    blob = _hashlib_rows(parts, rows)
    return blob, ["0x" + blob[i : i + 32].hex() for i in range(0, len(blob), 32)]


def row_digests(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[bytes]:
    """The 32-byte row hashes (see `row_hashes`)."""
    blob, _ = row_hash_table(model_id, names, outputs)
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


def row_hashes(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[str]:
    """One hash per batch row over all outputs of that row (all outputs share the batch axis)."""
    return row_hash_table(model_id, names, outputs)[1]


def input_hash(model_id: str, inputs: np.ndarray) -> str:
    """``SHA-256("aivm-in-v1" || model_id || inputs, C order, little-endian)``: what a request commits to."""
    data = np.ascontiguousarray(inputs, dtype=inputs.dtype.newbyteorder("<")).tobytes()
    return "0x" + hashlib.sha256(b"aivm-in-v1" + _id_bytes(model_id) + data).hexdigest()


def output_hash(model_id: str, rows: Sequence[str] | Sequence[bytes] | bytes) -> str:
    """Hash over the ordered row hashes of one batch (``0x`` strings, 32-byte digests, or the
    digests concatenated as `row_hash_table` gives them)."""
    if isinstance(rows, bytes | bytearray):
        if len(rows) % 32:
            raise ValueError("concatenated row digests must be a multiple of 32 bytes")
        count, joined = len(rows) // 32, bytes(rows)
    else:
        count = len(rows)
        joined = b"".join(row if isinstance(row, bytes) else bytes.fromhex(row[2:]) for row in rows)
    h = hashlib.sha256(b"aivm-out-v1" + _id_bytes(model_id) + struct.pack("<Q", count))
    h.update(joined)
    return "0x" + h.hexdigest()
