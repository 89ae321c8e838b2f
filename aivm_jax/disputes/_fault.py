"""Fault injection: the values a node that lies consistently at one step would commit to.

A liar for tests, devnets and demos (`aivm node --fault-step N`): it changes one element of
step ``N``'s output (batch row ``row``, flat element ``element``) and runs every later step
on the changed values with the NumPy reference, so its trace is self-consistent everywhere
except at that one element, the position a dispute must find.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._trace import step_values
from aivm_jax.program import Program

__all__ = ["faulty_values"]


def faulty_values(
    program: Program, inputs: Any, step: int, *, row: int = 0, element: int = 0, delta: int = 1
) -> list[np.ndarray]:
    """`step_values` with output element ``element`` of step ``step`` in batch row ``row``
    moved by ``delta`` (wrapping within its dtype: int8 127 + 1 is -128), and every later
    step recomputed from it.

    Raises:
      CommitmentError: ``step``, ``row`` or ``element`` out of range, or ``delta`` that
        leaves the value unchanged.
    """
    from aivm_jax.runtime._execute import run_steps

    values = step_values(program, inputs, engine="reference")
    if not 0 <= step < len(values):
        raise CommitmentError(f"step {step} is not in a program of {len(values)} steps")
    target = np.array(values[step], copy=True)
    if not 0 <= row < target.shape[0] or not 0 <= element < target[row].size:
        raise CommitmentError(f"row {row}, element {element} is outside step {step}'s output {target.shape}")
    flat = target[row].reshape(-1)
    info = np.iinfo(target.dtype)
    span = int(info.max) - int(info.min) + 1
    moved = (int(flat[element]) + delta - int(info.min)) % span + int(info.min)
    if moved == int(flat[element]):
        raise CommitmentError(f"delta {delta} leaves the value unchanged in {target.dtype}")
    flat[element] = moved
    target[row] = flat.reshape(target[row].shape)
    values[step] = target
    first = len(program.inputs)
    names = {spec.name: values[s] for s, spec in enumerate(program.inputs)}
    env = {**program.params, **names}
    for n, node in enumerate(program.nodes):
        s = first + n
        if s <= step:
            env[node.output] = values[s]
            continue
        run_steps([node], env, "reference")
        values[s] = np.asarray(env[node.output])
    return values
