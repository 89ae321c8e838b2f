"""Worst-case magnitudes of every value of a program, from its dtypes and weights alone.

Interval arithmetic on absolute values, with Python integers (no overflow):
the input is bounded by its dtype, each op's output bound follows from its
operands' bounds and its parameters (``matmul``: ``max_n sum_k |w[k, n]| * B``).
The circuit export uses these bounds to size the circuit and to refuse any
program whose int32 values could wrap, since a circuit computes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aivm_jax.program import Node, Program

__all__ = ["program_bounds"]

_INT_RANGE = {"int8": 2**7, "int32": 2**31}


def _abs_int(array: np.ndarray) -> np.ndarray:
    return np.abs(array.astype(np.int64))


def program_bounds(program: Program, nodes: Sequence[Node] | None = None) -> dict[str, int]:
    """Value name -> an upper bound on ``|v|`` over every input the input dtypes allow.

    ``nodes`` replaces the program's own node list (the circuit export's
    rewritten order); parameters and inputs are the program's.
    """
    bounds: dict[str, int] = {s.name: _INT_RANGE[s.dtype] for s in program.inputs}
    params = program.params
    for node in program.nodes if nodes is None else nodes:
        first = bounds.get(node.inputs[0], 0)
        if node.op == "matmul":
            out = first * int(_abs_int(params[node.inputs[1]]).sum(axis=0).max())
        elif node.op == "conv2d":
            w = _abs_int(params[node.inputs[1]])
            out = first * int(w.reshape(-1, w.shape[-1]).sum(axis=0).max())
        elif node.op == "bias_add":
            out = first + int(_abs_int(params[node.inputs[1]]).max())
        elif node.op == "requantize":
            m = _abs_int(params[node.inputs[1]]).tolist()
            s = params[node.inputs[2]].astype(np.int64).tolist()
            pairs = zip(np.broadcast_to(m, np.shape(m) or (1,)), np.broadcast_to(s, np.shape(s) or (1,)))
            quotient = max(((first * int(mi)) >> int(si)) + 1 for mi, si in pairs)
            out = min(quotient, _INT_RANGE[node.attrs["out_dtype"]])
        elif node.op == "table":
            out = int(_abs_int(params[node.inputs[1]]).max())
        elif node.op == "concat":
            out = max(bounds[name] for name in node.inputs)
        elif node.op == "argmax":
            shape = (1, *program.value_shape(node.inputs[0]))
            out = shape[node.attrs["axis"] % len(shape)]
        else:  # relu, pools (a mean or max never exceeds its operands), layout ops
            out = first
        bounds[node.output] = out
    return bounds
