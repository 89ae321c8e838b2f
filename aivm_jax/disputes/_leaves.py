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

import ctypes
import math
import sys

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import _keccak
from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._merkle import hash_leaf

__all__ = [
    "DTYPE_CODES",
    "SLICE_BYTES",
    "TAGS",
    "dtype_code",
    "encode_leaf",
    "leaf",
    "little_endian",
    "rows_per_slice",
    "slice_bytes",
    "slice_count",
    "slice_leaves",
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
    """``r = max(1, SLICE_BYTES // (row_elements * itemsize))``: rows grouped in one slice.

    Raises:
      CommitmentError: rows of no elements (a tensor with a zero-length last axis).
    """
    if row_elements <= 0:
        raise CommitmentError(f"a tensor of rows of {row_elements} elements has no slices")
    return max(1, SLICE_BYTES // (row_elements * itemsize))


def slice_count(shape: tuple[int, ...], itemsize: int) -> int:
    """How many slices a tensor of ``shape`` (no batch axis) has."""
    d = shape[-1] if shape else 1
    rows = math.prod(shape) // d if d else 0
    return -(-rows // rows_per_slice(d, itemsize))


def slice_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes in each slice but the last of a tensor of ``shape``: ``r * D * itemsize``."""
    d = shape[-1] if shape else 1
    return rows_per_slice(d, itemsize) * d * itemsize


def dtype_code(dtype: np.dtype) -> int:
    """``DTYPE_CODES[dtype.name]`` (8 or 32), without building the name (a slow NumPy property).

    Raises:
      CommitmentError: ``dtype`` is not int8 or int32.
    """
    if dtype.kind == "i" and dtype.itemsize in (1, 4):
        return 8 * dtype.itemsize
    raise CommitmentError(f"tensors are int8 or int32, got {dtype}")


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous little-endian int8/int32 array (no copy where it is one).

    Raises:
      CommitmentError: not int8 or int32.
    """
    dtype_code(array.dtype)
    if _LITTLE and array.dtype.isnative and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


_LITTLE = sys.byteorder == "little"


def tensor_slices(array: np.ndarray) -> list[bytes]:
    """The slices of one tensor (an activation's batch row, or a parameter), each its
    little-endian bytes (see the module docstring for the rule)."""
    data = little_endian(array).tobytes()
    step = slice_bytes(array.shape, array.itemsize)
    return [data[k : k + step] for k in range(0, len(data), step)]


def slice_leaves(tag_: bytes, i: int, array: np.ndarray) -> list[bytes]:
    """``[leaf(tag_, i, j, s) for j, s in enumerate(tensor_slices(array))]`` (32 bytes each),
    in one native call where the batched Keccak loads (`aivm_jax.disputes._keccak`)."""
    library = _keccak.native_library()
    data = little_endian(array)
    if library is None or data.nbytes == 0 or len(tag_) != 32 or not 0 <= i < 2**64:
        return [leaf(tag_, i, j, s) for j, s in enumerate(tensor_slices(array))]
    step = slice_bytes(array.shape, array.itemsize)
    n = -(-data.nbytes // step)
    out = ctypes.create_string_buffer(32 * n)
    library.aivm_slice_leaves(tag_, i, data.ctypes.data, data.nbytes, step, out)
    raw = out.raw
    return [raw[k : k + 32] for k in range(0, 32 * n, 32)]
