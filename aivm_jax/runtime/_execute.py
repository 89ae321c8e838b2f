"""The graph interpreter: runs a program's nodes in order with one of the two op implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from aivm_jax.ops import OPSET
from aivm_jax.ops._fusion import FusedDense, fuse_dense_chains, run_fused
from aivm_jax.program import Program

__all__ = ["evaluate"]

Implementation = Literal["lowering", "reference"]


def evaluate(
    program: Program,
    feeds: Mapping[str, Any],
    params: Mapping[str, Any],
    implementation: Implementation,
    *,
    fuse: bool = False,
) -> list[Any]:
    """Run ``program`` on ``feeds`` (input name -> batched array) and return its outputs in order.

    ``implementation="lowering"`` uses the JAX ops (traceable by ``jax.jit``);
    ``"reference"`` the NumPy yellow-paper ops. ``params`` holds the program's
    parameters as arrays of the matching kind (device arrays for JAX).
    ``fuse=True`` (lowering only) runs dense chains as one fused op
    (`aivm_jax.ops._fusion`); the integers are the same.
    """
    values: dict[str, Any] = {**params, **feeds}
    steps = fuse_dense_chains(program) if fuse and implementation == "lowering" else program.nodes
    for node in steps:
        if isinstance(node, FusedDense):
            values[node.output] = run_fused(node, values)
            continue
        fn = getattr(OPSET[node.op], implementation)
        values[node.output] = fn(*(values[name] for name in node.inputs), **node.attrs)
    return [values[spec.name] for spec in program.outputs]
