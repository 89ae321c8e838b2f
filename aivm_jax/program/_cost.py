"""What running a program costs: work, memory and compile size, from its types alone."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from aivm_jax.ops import NodeCost, TensorType

__all__ = ["ResourceEstimate", "estimate"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceEstimate:
    """A program's cost on one batch, computed from its graph and shapes alone (no engine runs).

    The same numbers on every node, so a node can refuse a request over its own
    memory or time budget before compiling anything. They estimate, they do not
    measure: XLA's fusion usually holds fewer values at once, an engine's
    temporaries may add a small factor.

    Attributes:
      batch: the batch size estimated for.
      input_shapes: the row shapes of the inputs (no batch axis) estimated for.
      work: operations (`aivm_jax.ops.NodeCost`) over the whole batch.
      peak_activation_bytes: most bytes the graph's values and the running op's
        temporaries hold at once, over the whole batch (values live from the node
        that computes them to their last reader; outputs to the end).
      param_bytes: bytes of the program's parameters (held once, any batch).
      compile_units: size of the compiled program (`aivm_jax.ops.NodeCost`);
        independent of the batch.
      nodes: the program's node count.
    """

    batch: int
    input_shapes: Mapping[str, tuple[int, ...]]
    work: int
    peak_activation_bytes: int
    param_bytes: int
    compile_units: int
    nodes: int

    @property
    def total_bytes(self) -> int:
        """``peak_activation_bytes + param_bytes``."""
        return self.peak_activation_bytes + self.param_bytes

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        out["total_bytes"] = self.total_bytes
        return out


def _row_bytes(t: TensorType) -> int:
    return math.prod(t.shape[1:]) * np.dtype(t.dtype).itemsize


def estimate(
    *,
    batch: int,
    input_shapes: Mapping[str, tuple[int, ...]],
    node_io: Sequence[tuple[tuple[str, ...], str]],
    costs: Sequence[NodeCost],
    types: Mapping[str, TensorType],
    outputs: Sequence[str],
    params: Mapping[str, np.ndarray],
) -> ResourceEstimate:
    """Add up a typed graph's costs for ``batch`` rows.

    Args:
      node_io: per node, the names it reads and the name it writes, in order.
      costs: per node, its per-row `NodeCost`.
      types: every activation's type (batch axis included, its size ignored).
      outputs: the program's output names (live to the end).
      params: the program's parameters (not activations).
    """
    last_use: dict[str, int] = {}
    for i, (reads, _) in enumerate(node_io):
        for name in reads:
            if name not in params:
                last_use[name] = i
    end = len(node_io)
    for name in outputs:
        last_use[name] = end
    live = sum(_row_bytes(types[name]) for name in input_shapes)  # inputs, live from the start
    peak = live
    for i, ((reads, written), cost) in enumerate(zip(node_io, costs)):
        live += _row_bytes(types[written])
        peak = max(peak, live + cost.scratch_bytes)
        for name in {*reads, written}:  # values whose last reader this node was (or that none reads)
            if name not in params and last_use.get(name, i) == i:
                live -= _row_bytes(types[name])
    return ResourceEstimate(
        batch=batch,
        input_shapes=dict(input_shapes),
        work=batch * sum(c.work for c in costs),
        peak_activation_bytes=batch * peak,
        param_bytes=int(sum(a.nbytes for a in params.values())),
        compile_units=sum(c.compile_units for c in costs),
        nodes=len(node_io),
    )
