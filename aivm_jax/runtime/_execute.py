"""The graph interpreter: runs a program's nodes in order with one of the two op implementations,
whole or in segments."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from aivm_jax.ops import OPSET
from aivm_jax.program import Program
from aivm_jax.runtime._fusion import FusedAttention, FusedDense, Requantized, Step, run_fused, step_inputs

__all__ = ["Segment", "evaluate", "plan_segments", "run_steps"]

Implementation = Literal["lowering", "reference"]


def evaluate(
    program: Program,
    feeds: Mapping[str, Any],
    params: Mapping[str, Any],
    implementation: Implementation,
) -> list[Any]:
    """Run ``program`` on ``feeds`` (input name -> batched array) and return its outputs in order.

    ``implementation="lowering"`` uses the JAX ops (traceable by ``jax.jit``);
    ``"reference"`` the NumPy yellow-paper ops. ``params`` holds the program's
    parameters as arrays of the matching kind (device arrays for JAX).
    """
    values: dict[str, Any] = {**params, **feeds}
    run_steps(program.nodes, values, implementation)
    return [values[spec.name] for spec in program.outputs]


def run_steps(steps: Sequence[Step], values: dict[str, Any], implementation: Implementation) -> None:
    """Apply ``steps`` in order, adding each output to ``values`` (name -> array)."""
    for step in steps:
        if isinstance(step, (FusedDense, FusedAttention, Requantized)):
            values[step.output] = run_fused(step, values)
            continue
        fn = getattr(OPSET[step.op], implementation)
        values[step.output] = fn(*(values[name] for name in step.inputs), **step.attrs)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of consecutive steps: the values it ``reads`` from inputs or earlier segments,
    the ``params`` it reads, and the values it ``writes`` for later segments or the outputs."""

    steps: tuple[Step, ...]
    reads: tuple[str, ...]
    params: tuple[str, ...]
    writes: tuple[str, ...]


def plan_segments(program: Program, steps: Sequence[Step], size: int) -> list[Segment]:
    """Cut ``steps`` into segments of at most ``size`` steps, with what flows between them."""
    chunks = [tuple(steps[i : i + size]) for i in range(0, len(steps), size)]
    outputs = {spec.name for spec in program.outputs}
    segments = []
    for i, chunk in enumerate(chunks):
        produced = {step.output for step in chunk}
        used = {name for step in chunk for name in step_inputs(step)}
        later = {name for rest in chunks[i + 1 :] for step in rest for name in step_inputs(step)} | outputs
        segments.append(
            Segment(
                steps=chunk,
                reads=tuple(sorted(used - produced - set(program.params))),
                params=tuple(sorted(used & set(program.params))),
                writes=tuple(sorted(produced & later)),
            )
        )
    return segments
