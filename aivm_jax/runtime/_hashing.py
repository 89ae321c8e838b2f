"""Hashes of inference results: one per batch row, and one over the whole batch.

``row_hash = SHA-256("aivm-row-v1" || model_id (32 bytes) || for each output in
order: len(name) u16 || name || dtype name || u8 rank || shape (u32 each) ||
row bytes little-endian)``.

``output_hash = SHA-256("aivm-out-v1" || model_id || batch size u64 || row
hashes in order)``. ``input_hash`` binds a request to its integer input the same
way. Hashes print as ``0x`` + 64 hex digits, a ``bytes32``.
A row hash depends only on the model and that row's outputs, so it is the
same whatever batch the row was computed in.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["input_hash", "output_hash", "row_digests", "row_header", "row_hashes"]


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


def row_digests(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[bytes]:
    """The 32-byte row hashes (see `row_hashes`), computed without per-row re-hashing of the prefix."""
    headers = [row_header(name, out.dtype.name, out.shape[1:]) for name, out in zip(names, outputs)]
    little = [np.ascontiguousarray(o, dtype=o.dtype.newbyteorder("<")) for o in outputs]
    flat = [memoryview(o.reshape(-1).view(np.uint8)) for o in little]
    sizes = [o[0].nbytes if o.shape[0] else 0 for o in little]
    base = hashlib.sha256(b"aivm-row-v1" + _id_bytes(model_id) + headers[0])  # shared by every row
    digests = []
    for row in range(outputs[0].shape[0]):
        h = base.copy()
        h.update(flat[0][row * sizes[0] : (row + 1) * sizes[0]])
        for header, data, size in zip(headers[1:], flat[1:], sizes[1:]):
            h.update(header)
            h.update(data[row * size : (row + 1) * size])
        digests.append(h.digest())
    return digests


def row_hashes(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[str]:
    """One hash per batch row over all outputs of that row (all outputs share the batch axis)."""
    return ["0x" + d.hex() for d in row_digests(model_id, names, outputs)]


def input_hash(model_id: str, inputs: np.ndarray) -> str:
    """``SHA-256("aivm-in-v1" || model_id || inputs, C order, little-endian)``: what a request commits to."""
    data = np.ascontiguousarray(inputs, dtype=inputs.dtype.newbyteorder("<")).tobytes()
    return "0x" + hashlib.sha256(b"aivm-in-v1" + _id_bytes(model_id) + data).hexdigest()


def output_hash(model_id: str, rows: Sequence[str] | Sequence[bytes]) -> str:
    """Hash over the ordered row hashes of one batch (``0x`` strings or 32-byte digests)."""
    h = hashlib.sha256(b"aivm-out-v1" + _id_bytes(model_id) + struct.pack("<Q", len(rows)))
    for row in rows:
        h.update(row if isinstance(row, bytes) else bytes.fromhex(row[2:]))
    return "0x" + h.hexdigest()
