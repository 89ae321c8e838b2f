"""Which ``--dim`` axes stay dynamic in an imported program, decided by converting at two lengths.

A symbolic dim bound with ``--dim NAME=N`` (a sequence axis, say) becomes a
dynamic axis of the program -- any length from 1 to ``N`` -- only when the
program does not depend on the length. That is decided exactly, in two steps:

1. The ONNX graph is read (bound, shape-inferred, folded) at ``N`` and at two
   shorter lengths. The nodes left must be the same, and so must every folded
   constant, with two exceptions that are rewritten to forms that hold at any
   length: a constant added to an activation that is the same at every position
   of the axis (a token-type row) keeps one position and broadcasts, and one that
   is a prefix of the constant at ``N`` (a learned position table sliced to the
   length) becomes ``gather(iota(ids), table)``, as MiniLM's position embedding
   is, when an input of row shape ``(N,)`` gives the positions. ``Reshape``
   targets that hold the length are left to step 2. Any other constant folded
   from the length keeps the axis static.
2. The rewritten graph is converted at ``N`` and at ``N - 1`` by a probe (a
   few calibration rows, the NumPy reference instead of JAX). The programs must
   have the same nodes, inputs, outputs and parameter names, dtypes and shapes;
   attributes must be equal except for ``reshape`` shapes, where one entry that
   follows the length becomes ``-1``, or a reshape to the shape it already has
   (a rescaling copy) is dropped and its readers read its input. Anything else
   keeps the axis static.

Parameter *values* are not compared in step 2 (the probes calibrate on other
rows, so their scales differ): every constant the graph holds was compared in
step 1, and the converters turn a length into shapes and attributes only.
The `Program` finally checks the graph at the longest and at the shortest
lengths; a failure there keeps the axes static too.

A static axis is not an error: the program is then what a static import gives,
and the reason is reported (``source.dims`` in the metadata). (When only the
calibrated program fails -- its structure differs from the probe's, or the
`Program` check at length 1 fails -- the rewritten constants stay in it: the
program is exact at ``N`` all the same, with the position table as int8 rows.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivm_jax.ops import OPSET
from aivm_jax.program import Node, ValueSpec
from aivm_jax.quant._graph import GraphBuilder
from aivm_jax.quant.onnx._context import Context, Val
from aivm_jax.quant.onnx._graph import BATCH, OnnxGraph

__all__ = [
    "Converted",
    "DimPlan",
    "ProbeBuilder",
    "Rewrite",
    "apply_rewrites",
    "bound_axes",
    "compare_graphs",
    "compare_programs",
    "emit_positions",
    "generalize",
    "merge_entries",
    "output_axes",
    "probe_lengths",
    "same_structure",
    "truncate",
]


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """How a constant folded from the length is written so that it holds at any length.

    Attributes:
      kind: ``"uniform"`` (the same at every position: keep one, broadcast) or
        ``"positions"`` (a prefix of ``table``: gather its rows at the positions).
      axis: the constant's axis that follows the length.
      table: for ``"positions"``, the constant at the longest length as ``(N, D)`` rows.
      ids: for ``"positions"``, the graph input whose row shape is ``(N,)``.
    """

    kind: str
    axis: int
    table: np.ndarray | None = None
    ids: str | None = None


@dataclasses.dataclass
class DimPlan:
    """What happens to one bound dim.

    Attributes:
      name: the dim's name; size: its bound (longest) length.
      axes: graph input name -> row axis (no batch axis) the dim sizes.
      rewrites: constant name -> `Rewrite`, for the constants that follow this dim.
      reason: why the axis stays static; ``None`` while it may be dynamic.
      entries: what `compare_programs` found (reshapes whose shapes follow the length).
      outputs: output name -> row axes that follow the length.
    """

    name: str
    size: int
    axes: dict[str, int]
    rewrites: dict[str, Rewrite] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    entries: dict[str, tuple[set[int], bool]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return self.reason is None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "dynamic": self.dynamic}
        if self.reason is not None:
            out["static_because"] = self.reason
        return out


def bound_axes(model, name: str) -> dict[str, int]:
    """Graph input name -> row axis of each input axis whose symbolic dim is ``name``."""
    initializers = {t.name for t in model.graph.initializer}
    axes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and dim.dim_param == name:
                axes[value.name] = axis - 1
    return axes


def probe_lengths(size: int) -> list[int]:
    """The shorter lengths step 1 reads the graph at: ``N - 1`` and about ``N / 2``."""
    return sorted({size - 1, (size + 1) // 2} - {size, 0}, reverse=True)


def truncate(arrays: Mapping[str, np.ndarray], axes: Mapping[str, int], length: int) -> dict[str, np.ndarray]:
    """Rows cut to ``length`` along each input's bound row axis (batch axis first)."""
    return {k: np.take(v, np.arange(length), axis=1 + axes[k]) if k in axes else v for k, v in arrays.items()}


# --------------------------------------------------------------------------- step 1: the folded graphs


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


_CALIBRATED_ATTRS = frozenset({("layer_norm", "eps")})
"""Attributes computed from calibration scales (``eps`` in the input's units squared), not from
shapes: the probes calibrate on other rows, so these are not compared."""


def _same_attrs(a: Node, b: Node) -> bool:
    """Whether two program nodes of one op have the same attributes (bar `_CALIBRATED_ATTRS`)."""
    return a.attrs.keys() == b.attrs.keys() and all(
        (a.op, k) in _CALIBRATED_ATTRS or _same_value(a.attrs[k], b.attrs[k]) for k in a.attrs
    )


def _same_node(a, b) -> bool:
    return (
        (a.op_type, a.name, a.inputs, a.outputs, a.domain)
        == (b.op_type, b.name, b.inputs, b.outputs, b.domain)
        and a.attrs.keys() == b.attrs.keys()
        and all(_same_value(a.attrs[k], b.attrs[k]) for k in a.attrs)
    )


def _length_axis(long: np.ndarray, short: np.ndarray, size: int, length: int) -> int | None:
    """The one axis along which ``short`` is ``long`` cut to ``length`` (``long`` has ``size`` there)."""
    if long.ndim != short.ndim:
        return None
    differ = [a for a, (x, y) in enumerate(zip(long.shape, short.shape)) if x != y]
    if len(differ) != 1 or long.shape[differ[0]] != size or short.shape[differ[0]] != length:
        return None
    axis = differ[0]
    return axis if np.array_equal(np.take(long, np.arange(length), axis=axis), short) else None


def _classify(graph: OnnxGraph, name: str, axis: int, ids: str | None, size: int) -> Rewrite | str:
    """The rewrite of constant ``name`` (a prefix along ``axis``), or why there is none."""
    value = graph.consts[name]
    users = graph.consumers().get(name, [])
    user = users[0] if users else None
    where = f"{user.op_type} {user.name!r}" if user else f"constant {name!r}"
    if len(users) != 1 or user.op_type != "Add":
        return f"the graph folds its length into {where}"
    other = next((n for n in user.inputs[:2] if n != name), None)
    shape = graph.shapes.get(other) if other else None
    if shape is None or graph.const(other) is not None or len(shape) < value.ndim:
        return f"the graph folds its length into {where}"
    # the constant's axis, aligned with the activation's (right-aligned broadcasting)
    act_axis = axis + len(shape) - value.ndim
    if act_axis == 0 or shape[act_axis] != size:
        return f"the graph folds its length into {where}"
    first = np.take(value, [0], axis=axis)
    if np.array_equal(np.broadcast_to(first, value.shape), value):
        return Rewrite("uniform", axis)
    rows = value.reshape(value.shape[value.ndim - 2 :]) if value.ndim >= 2 else None
    if (
        rows is None
        or any(d != 1 for d in value.shape[: value.ndim - 2])
        or axis != value.ndim - 2
        or act_axis != len(shape) - 2
    ):
        return f"the graph folds its length into {where} (a constant that varies along it is supported only as (length, D) rows)"
    if ids is None:
        return f"{where} adds a position table, and no input of row shape ({size},) gives the positions"
    return Rewrite("positions", axis, table=np.asarray(rows), ids=ids)


def compare_graphs(plan: DimPlan, base: OnnxGraph, shorter: Mapping[int, OnnxGraph]) -> None:
    """Step 1 for one dim: fill ``plan.rewrites``, or ``plan.reason`` when the axis stays static.

    Args:
      base: the graph read at ``plan.size``; shorter: length -> the graph read at it.
    """
    ids = next((k for k, a in plan.axes.items() if base.inputs[k] == (plan.size,) and a == 0), None)
    rewrites: dict[str, Rewrite] = {}
    for length, other in shorter.items():
        if len(base.nodes) != len(other.nodes) or not all(map(_same_node, base.nodes, other.nodes)):
            plan.reason = f"the graph folds to other nodes at length {length}"
            return
        if base.consts.keys() != other.consts.keys():
            plan.reason = f"the graph folds to other constants at length {length}"
            return
        users = base.consumers()
        for name, value in base.consts.items():
            short = other.consts[name]
            if np.shape(value) == np.shape(short) and np.array_equal(value, short):
                continue
            if all(u.op_type == "Reshape" and u.inputs[1] == name for u in users.get(name, [])):
                continue  # a target shape that holds the length: step 2 decides
            axis = _length_axis(np.asarray(value), np.asarray(short), plan.size, length)
            found = (
                _classify(base, name, axis, ids, plan.size)
                if axis is not None
                else "the graph folds its length into "
                + ", ".join(f"{u.op_type} {u.name!r}" for u in users.get(name, [])[:1])
            )
            if isinstance(found, str):
                plan.reason = found
                return
            rewrites[name] = found
    plan.rewrites = rewrites


def apply_rewrites(graph: OnnxGraph, rewrites: Mapping[str, Rewrite]) -> OnnxGraph:
    """A copy of ``graph`` with ``rewrites`` applied: a uniform constant keeps one position, a
    position table becomes an activation (bound by `emit_positions`, shaped ``(BATCH, L, D)``)."""
    consts, shapes = dict(graph.consts), dict(graph.shapes)
    for name, rewrite in rewrites.items():
        if rewrite.kind == "uniform":
            consts[name] = np.take(consts[name], [0], axis=rewrite.axis)
        else:
            length = graph.inputs[rewrite.ids][0]
            del consts[name]
            shapes[name] = (BATCH, length, rewrite.table.shape[1])
    return dataclasses.replace(graph, consts=consts, shapes=shapes)


def emit_positions(ctx: Context, rewrites: Mapping[str, Rewrite], input_names: Mapping[str, str]) -> None:
    """Bind each position table of ``rewrites``: ``gather(iota(ids), table)`` widened to int32, as
    the ``Gather`` converter binds an embedding (one ``iota`` per ids input)."""
    from aivm_jax.quant.onnx._ops import _widen

    builder = ctx.builder
    for name, rewrite in rewrites.items():
        if rewrite.kind != "positions":
            continue
        ids = input_names[rewrite.ids]
        key = ("positions", ids)
        if key not in ctx.shared:
            ctx.shared[key] = builder.op("iota", [ids], ctx.fresh(f"{ids}.positions"))
        out = ctx.fresh(name)
        table = builder.embedding_table(f"{out}.table", rewrite.table)
        rows = builder.op("gather", [ctx.shared[key], table], f"{out}.rows", builder.scales[table])
        ctx.bind(name, _widen(ctx, Val(rows)))


# --------------------------------------------------------------------------- step 2: the programs


class ProbeBuilder(GraphBuilder):
    """A `GraphBuilder` that evaluates nodes with the NumPy reference (no JAX compilation):
    the probe conversions only need the program's structure, on a few rows."""

    def __init__(self, name, inputs, feeds, input_scales=None) -> None:
        super().__init__(name, inputs, {}, input_scales)
        self.values = {k: np.asarray(v) for k, v in feeds.items()}

    def op(self, op: str, inputs: list[str], output: str, scale=None, **attrs: Any) -> str:
        self.nodes.append(Node(op=op, inputs=tuple(inputs), output=output, attrs=attrs))
        operands = [self.values[n] if n in self.values else np.asarray(self.params[n]) for n in inputs]
        self.values[output] = np.asarray(OPSET[op].reference(*operands, **attrs))
        if scale is not None:
            self.scales[output] = scale
        return output


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a conversion gave: its nodes, parameters, output specs (static), and row shapes."""

    nodes: tuple[Node, ...]
    params: Mapping[str, np.ndarray]
    outputs: tuple[ValueSpec, ...]
    values: Mapping[str, tuple[int, ...]]  # row shape of every node output


def compare_programs(base: Converted, shorter: Converted) -> dict[str, tuple[set[int], bool]] | str:
    """Step 2: reshape output name -> (entries of its ``shape`` that follow the length, whether
    it reshapes to the shape it already has at both lengths), or why the programs differ otherwise."""
    if len(base.nodes) != len(shorter.nodes):
        return "the program has another number of nodes at a shorter length"
    for name, value in base.params.items():
        other = shorter.params.get(name)
        if other is None or other.dtype != value.dtype or other.shape != value.shape:
            return f"parameter {name!r} has a shape that follows the length"
    if base.params.keys() != shorter.params.keys():
        return "the program has other parameters at a shorter length"
    entries = {}
    for a, b in zip(base.nodes, shorter.nodes):
        if (a.op, a.inputs, a.output) != (b.op, b.inputs, b.output):
            return f"the program has other nodes at a shorter length (at {a.op} {a.output!r})"
        if _same_attrs(a, b):
            continue
        if a.op != "reshape" or set(a.attrs) != {"shape"} or len(a.attrs["shape"]) != len(b.attrs["shape"]):
            return f"{a.op} {a.output!r} fixes the length in its attributes"
        varying = {i for i, (x, y) in enumerate(zip(a.attrs["shape"], b.attrs["shape"])) if x != y}
        same = (
            tuple(a.attrs["shape"]) == base.values[a.inputs[0]]
            and tuple(b.attrs["shape"]) == shorter.values[b.inputs[0]]
        )
        entries[a.output] = (varying, same)
    return entries


def merge_entries(found: list[Mapping[str, tuple[set[int], bool]]]) -> dict[str, tuple[set[int], bool]]:
    """`compare_programs`'s findings for several dims as one: entries joined, copies only if all say so."""
    merged: dict[str, tuple[set[int], bool]] = {}
    for entries in found:
        for name, (varying, same) in entries.items():
            old = merged.get(name, (set(), True))
            merged[name] = (old[0] | varying, old[1] and same)
    return merged


def generalize(
    base: Converted, entries: Mapping[str, tuple[set[int], bool]], outputs: set[str]
) -> tuple[list[Node], None] | tuple[None, str]:
    """The nodes of ``base`` that hold at any length, or why there are none.

    A reshape to the shape its input already has (a rescaling copy) is dropped and
    its readers read the input; another reshape with one entry following the
    length gets ``-1`` there.
    """
    rename: dict[str, str] = {}
    nodes = []
    for node in base.nodes:
        node = dataclasses.replace(node, inputs=tuple(rename.get(n, n) for n in node.inputs))
        if node.output in entries:
            varying, same = entries[node.output]
            shape = list(node.attrs["shape"])
            if same and node.output not in outputs:
                rename[node.output] = node.inputs[0]
                continue
            if len(varying) != 1 or -1 in shape:
                return None, f"reshape {node.output!r} fixes the length in its target shape {tuple(shape)}"
            shape[next(iter(varying))] = -1
            node = dataclasses.replace(node, attrs={**node.attrs, "shape": tuple(shape)})
        nodes.append(node)
    return nodes, None


def same_structure(a: Converted, b: Converted) -> bool:
    """Whether two conversions at one length have the same nodes and parameter names and shapes
    (attributes compared as `compare_programs` compares them)."""
    return (
        len(a.nodes) == len(b.nodes)
        and all(
            (x.op, x.inputs, x.output) == (y.op, y.inputs, y.output) and _same_attrs(x, y)
            for x, y in zip(a.nodes, b.nodes)
        )
        and a.params.keys() == b.params.keys()
        and all(a.params[k].shape == b.params[k].shape for k in a.params)
    )


def output_axes(base: Converted, shorter: Converted) -> dict[str, tuple[int, ...]]:
    """Output name -> the row axes whose size follows the length."""
    short = {spec.name: spec.shape for spec in shorter.outputs}
    return {
        spec.name: tuple(a for a, (x, y) in enumerate(zip(spec.shape, short[spec.name])) if x != y)
        for spec in base.outputs
    }
