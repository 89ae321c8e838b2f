"""The rows a one-step executor reads, cut from NumPy arrays as the game cuts them from slices.

A tensor of shape ``(..., D)`` is ``size / D`` rows of ``D`` elements (rank 0: one row of
one element); a *column* read of a parameter of rank >= 2 is row ``index`` of
``W.reshape(-1, D).T``. Rows are lists of Python ints (int8 or int32 values). The contract
side: ``contracts/disputes/OneStep.sol``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._model import STEP_DESCRIPTOR_ABI

__all__ = ["read_row", "read_rows", "step_struct"]


def step_struct(descriptor: bytes) -> tuple[Any, ...]:
    """A step descriptor (`aivm_jax.disputes.step_descriptor`) as the ``Step`` tuple web3
    passes to an executor: ``(op, [(kind, index, dtype, shape)], outDtype, outShape, attrs)``."""
    from eth_abi import decode

    op, operands, dtype, shape, attrs = decode(STEP_DESCRIPTOR_ABI, descriptor)
    return (op, [(k, i, d, list(s)) for k, i, d, s in operands], dtype, list(shape), list(attrs))


def read_row(array: np.ndarray, index: int, *, column: bool = False) -> list[int]:
    """Row ``index`` of ``array`` (or of ``array.reshape(-1, D).T`` with ``column``)."""
    d = array.shape[-1] if array.ndim else 1
    matrix = np.asarray(array).reshape(-1, d)
    if column:
        if array.ndim < 2:
            raise CommitmentError(f"a column read needs a tensor of rank >= 2, got shape {array.shape}")
        matrix = matrix.T
    if not 0 <= index < matrix.shape[0]:
        raise CommitmentError(f"row {index} is out of range for {matrix.shape[0]} rows")
    return [int(v) for v in matrix[index]]


def read_rows(operands: Sequence[np.ndarray], reads: Sequence[Sequence[Any]]) -> list[list[int]]:
    """The rows ``reads`` names (each ``(operand, column, index)``, as an executor's ``reads``
    returns them) out of ``operands`` (a trace value's batch row, or a parameter)."""
    return [read_row(operands[int(k)], int(index), column=bool(column)) for k, column, index in reads]
