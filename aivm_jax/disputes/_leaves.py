"""The leaf encodings shared by every dispute commitment, and how a tensor is cut into slices.

Every leaf is ``hash_leaf(abi.encode(bytes32 tag, uint256 i, uint256 j, bytes32
keccak256(payload)))``: 128 bytes, double-hashed (`aivm_jax.disputes._merkle`). The
tag names the kind of leaf and its version; ``i`` and ``j`` are its position (a step
and a slice, say); the payload is the data (a slice's bytes, a step's descriptor).
Solidity recomputes a leaf as

    keccak256(bytes.concat(keccak256(abi.encode(tag, i, j, keccak256(payload)))))

**Tags** are ASCII names left-aligned in 32 bytes and zero-padded, as Solidity
writes ``bytes32("aivm.trace.slice.v1")``.

**Slices.** A tensor (for an activation: one batch row of it, without the batch
axis) of shape ``(..., D)`` and dtype int8 or int32 is read as ``R = size / D``
rows of ``D`` elements, C order, little-endian (int8: one byte; int32: four bytes,
two's complement). Its slices are runs of ``r = max(1, SLICE_BYTES // (D *
itemsize))`` whole rows: slice ``j`` holds rows ``j*r .. min((j+1)*r, R) - 1``, so
row ``q`` is in slice ``q // r`` at byte offset ``(q % r) * D * itemsize``. A row is
never split; there are ``ceil(R / r)`` slices. A tensor of rank 0 is one row of one
element.
"""

from __future__ import annotations

import math

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._merkle import hash_leaf

__all__ = [
    "DTYPE_CODES",
    "SLICE_BYTES",
    "TAGS",
    "encode_leaf",
    "leaf",
    "rows_per_slice",
    "slice_count",
    "tag",
    "tensor_slices",
]

SLICE_BYTES = 1024
"""Target bytes per slice: whole rows are grouped into a slice up to this many bytes."""

DTYPE_CODES = {"int8": 8, "int32": 32}
"""A dtype's code in descriptors: its width in bits."""


def tag(name: str) -> bytes:
    """``bytes32(name)``: ASCII ``name`` left-aligned, zero-padded to 32 bytes.

    >>> tag("aivm.step.v1").hex()[:24]
    '6169766d2e737465702e7631'
    """
    raw = name.encode("ascii")
    if len(raw) > 32:
        raise CommitmentError(f"a tag is at most 32 ASCII bytes; {name!r} is {len(raw)}")
    return raw.ljust(32, b"\0")


TAGS = {
    name: tag(name)
    for name in [
        "aivm.model.v1",  # the model header
        "aivm.input.v1",  # a program input's spec
        "aivm.step.v1",  # a step's descriptor (op, attributes, operands, output)
        "aivm.output.v1",  # a program output: which step it is
        "aivm.param.v1",  # a parameter's descriptor (name, dtype, shape)
        "aivm.param.row.v1",  # a slice of a parameter's rows
        "aivm.param.col.v1",  # a slice of a parameter's columns (rows of its transpose)
        "aivm.trace.slice.v1",  # a slice of one step's output, one batch row
        "aivm.trace.step.v1",  # one step's root in a row's trace
        "aivm.trace.row.v1",  # one batch row's trace root in a batch's trace
        "aivm.input.row.v1",  # one batch row's input root in a request's input commitment
    ]
}
"""Every leaf tag, by name (each a ``bytes32``)."""


def encode_leaf(tag_: bytes, i: int, j: int, digest: bytes) -> bytes:
    """``abi.encode(bytes32 tag, uint256 i, uint256 j, bytes32 digest)``: 128 bytes."""
    if len(tag_) != 32 or len(digest) != 32:
        raise CommitmentError("a leaf's tag and digest are 32 bytes each")
    if not (0 <= i < 2**256 and 0 <= j < 2**256):
        raise CommitmentError(f"leaf positions are uint256, got {i}, {j}")
    return tag_ + i.to_bytes(32, "big") + j.to_bytes(32, "big") + digest


def leaf(tag_: bytes, i: int, j: int, payload: bytes) -> bytes:
    """The leaf hash (32 bytes) of ``payload`` at position ``(i, j)`` under ``tag_``."""
    return hash_leaf(encode_leaf(tag_, i, j, keccak256(payload)))


def rows_per_slice(row_elements: int, itemsize: int) -> int:
    """``r = max(1, SLICE_BYTES // (row_elements * itemsize))``: rows grouped in one slice."""
    return max(1, SLICE_BYTES // (row_elements * itemsize))


def slice_count(shape: tuple[int, ...], itemsize: int) -> int:
    """How many slices a tensor of ``shape`` (no batch axis) has."""
    d = shape[-1] if shape else 1
    rows = math.prod(shape) // d if d else 0
    return -(-rows // rows_per_slice(d, itemsize))


def tensor_slices(array: np.ndarray) -> list[bytes]:
    """The slices of one tensor (an activation's batch row, or a parameter), each its
    little-endian bytes (see the module docstring for the rule)."""
    if array.dtype.name not in DTYPE_CODES:
        raise CommitmentError(f"tensors are int8 or int32, got {array.dtype}")
    d = array.shape[-1] if array.ndim else 1
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    step = rows_per_slice(d, array.itemsize) * d * array.itemsize
    return [data[k : k + step] for k in range(0, len(data), step)]
