"""The rows a one-step executor reads, cut from NumPy arrays as the game cuts them from slices.

A tensor of shape ``(..., D)`` is ``size / D`` rows of ``D`` elements (rank 0: one row of
one element); a *column* read of a parameter of rank >= 2 is row ``index`` of
``W.reshape(-1, D).T``. A row is handed to ``execute`` as its **packed canonical bytes**:
int8 one byte per element, int32 four bytes little-endian two's complement (exactly the bytes
of the slice that holds it, which the game cuts without decoding). The contract side:
``contracts/disputes/OneStep.sol`` (``Packed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._leaves import DTYPE_CODES, little_endian
from aivm_jax.disputes._model import STEP_DESCRIPTOR_ABI

__all__ = ["pack_row", "read_row", "read_rows", "step_struct"]

_LIMITS = {8: (-(2**7), 2**7 - 1), 32: (-(2**31), 2**31 - 1)}


def step_struct(descriptor: bytes) -> tuple[Any, ...]:
    """A step descriptor (`aivm_jax.disputes.step_descriptor`) as the ``Step`` tuple web3
    passes to an executor: ``(op, [(kind, index, dtype, shape)], outDtype, outShape, attrs)``."""
    from eth_abi import decode

    op, operands, dtype, shape, attrs = decode(STEP_DESCRIPTOR_ABI, descriptor)
    return (op, [(k, i, d, list(s)) for k, i, d, s in operands], dtype, list(shape), list(attrs))


def pack_row(values: Iterable[int], dtype: str | int) -> bytes:
    """``values`` as one packed row in ``dtype`` (``"int8"``/``"int32"`` or code 8/32).

    >>> pack_row([-1, 1], "int8").hex(), pack_row([-2**31, 1], 32).hex()
    ('ff01', '0000008001000000')

    Raises:
      CommitmentError: an unknown dtype, or a value outside its range.
    """
    code = DTYPE_CODES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if code not in _LIMITS:
        raise CommitmentError(f"rows are int8 or int32 (code 8 or 32), got {dtype!r}")
    lo, hi = _LIMITS[code]
    ints = [int(v) for v in values]
    bad = [v for v in ints if not lo <= v <= hi]
    if bad:
        raise CommitmentError(f"{bad[0]} is outside int{code}'s range [{lo}, {hi}]")
    return np.array(ints, dtype=np.int8 if code == 8 else "<i4").tobytes()


def read_row(array: np.ndarray, index: int, *, column: bool = False) -> bytes:
    """Row ``index`` of ``array`` (or of ``array.reshape(-1, D).T`` with ``column``), packed
    in ``array``'s dtype.

    Raises:
      CommitmentError: ``array`` is not int8 or int32, a column of a rank < 2 tensor, or
        ``index`` out of range.
    """
    array = little_endian(np.asarray(array))
    d = array.shape[-1] if array.ndim else 1
    matrix = array.reshape(-1, d)
    if column:
        if array.ndim < 2:
            raise CommitmentError(f"a column read needs a tensor of rank >= 2, got shape {array.shape}")
        matrix = matrix.T
    if not 0 <= index < matrix.shape[0]:
        raise CommitmentError(f"row {index} is out of range for {matrix.shape[0]} rows")
    return np.ascontiguousarray(matrix[index]).tobytes()


def read_rows(operands: Sequence[np.ndarray], reads: Sequence[Sequence[Any]]) -> list[bytes]:
    """The packed rows ``reads`` names (each ``(operand, column, index)``, as an executor's
    ``reads`` returns them) out of ``operands`` (a trace value's batch row, or a parameter,
    each int8 or int32)."""
    return [read_row(operands[int(k)], int(index), column=bool(column)) for k, column, index in reads]
