"""Patterns: subgraphs converted as one unit. Each names what it replaces and checks every node it consumes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aivm_jax.quant.onnx._context import Context
from aivm_jax.quant.onnx._errors import OnnxImportError
from aivm_jax.quant.onnx._graph import BATCH, OnnxGraph, OnnxNode
from aivm_jax.quant.onnx._ops import _bn_affine, _emit_linear
from aivm_jax.quant.onnx._ops_transformer import convert_hard_swish, emit_gelu, emit_layer_norm, emit_softmax

__all__ = ["MASK_FLOOR", "Match", "fold_batch_norms", "match_patterns"]

_FOLDS_INTO = {"Conv", "Gemm", "MatMul"}


def fold_batch_norms(ctx: Context) -> None:
    """``Conv|Gemm|MatMul -> BatchNormalization`` becomes one layer with the affine map in its weights.

    Applies only when the layer's output feeds the ``BatchNormalization`` alone
    (and is no graph output), the layer's weight is a constant, and the
    normalization is in inference mode with constant statistics (its check
    passed). The normalization then binds its output to the layer's.
    """
    graph = ctx.graph
    producers, consumers = graph.producer_of(), graph.consumers()
    for node in graph.nodes:
        if node.op_type != "BatchNormalization":
            continue
        x = node.inputs[0]
        layer = producers.get(x)
        if (
            layer is None
            or layer.op_type not in _FOLDS_INTO
            or len(consumers.get(x, [])) != 1
            or x in graph.outputs
            or layer.name in ctx.fused
            or graph.const(layer.inputs[1]) is None
        ):
            continue
        ctx.fused[layer.name] = _bn_affine(graph, node)
        ctx.absorbed.add(node.name)
        ctx.patterns.append(
            {"pattern": f"{layer.op_type}+BatchNormalization", "nodes": [layer.name, node.name]}
        )


# --------------------------------------------------------------------------- transformer patterns


@dataclasses.dataclass(frozen=True)
class Match:
    """A subgraph converted as one unit.

    Attributes:
      pattern: what it replaces (recorded in the program's ``source.patterns``).
      nodes: every node it consumes, in graph order; none of their intermediate
        values is read outside the subgraph or is a graph output.
      anchor: the node at which it is converted (its last; every input is ready there).
      convert: ``convert(ctx, match)``; ``None`` for a subgraph whose work others do.
      params: what the converter needs (input and output names, constants).
    """

    pattern: str
    nodes: tuple[str, ...]
    anchor: str
    convert: Callable[[Context, Match], None] | None
    params: Mapping[str, Any]


class _View:
    """Graph lookups the matchers share."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        self.producer = graph.producer_of()
        self.consumers = graph.consumers()
        self.order = {node.name: i for i, node in enumerate(graph.nodes)}

    def users(self, value: str) -> list[OnnxNode]:
        return self.consumers.get(value, [])

    def only_user(self, value: str, op_type: str | tuple[str, ...]) -> OnnxNode | None:
        """The single consumer of an internal value, if it has that op type."""
        users = self.users(value)
        types = (op_type,) if isinstance(op_type, str) else op_type
        if len(users) != 1 or value in self.graph.outputs or users[0].op_type not in types:
            return None
        return users[0]

    def scalar(self, name: str) -> float | None:
        c = self.graph.const(name)
        return float(np.asarray(c).reshape(-1)[0]) if c is not None and np.size(c) == 1 else None

    def other(self, node: OnnxNode, value: str) -> str:
        """The operand of a two-input node that is not ``value``."""
        a, b = node.inputs[:2]
        return b if a == value else a

    def match(self, pattern: str, nodes: list[OnnxNode], convert, **params) -> Match:
        ordered = sorted(nodes, key=lambda n: self.order[n.name])
        return Match(pattern, tuple(n.name for n in ordered), ordered[-1].name, convert, params)


def _last_axis_mean(view: _View, node: OnnxNode) -> bool:
    shape = view.graph.shapes.get(node.inputs[0])
    if node.op_type != "ReduceMean" or shape is None or not node.attrs.get("keepdims", 1):
        return False
    if view.graph.opset >= 18:
        axes = view.graph.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    return axes is not None and [a % len(shape) for a in axes] == [len(shape) - 1] and len(shape) >= 2


def _match_layer_norm(view: _View, mean: OnnxNode) -> Match | None:
    """``ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(gamma)] [-> Add(beta)]``.

    What PyTorch's exporter writes for ``nn.LayerNorm`` at opsets below 17. The
    chain reads one value ``x``: the first mean and the ``Sub`` both read it.
    """
    if not _last_axis_mean(view, mean):
        return None
    x = mean.inputs[0]
    sub = view.only_user(mean.outputs[0], "Sub")
    if sub is None or sub.inputs != (x, mean.outputs[0]):
        return None
    users = view.users(sub.outputs[0])
    if len(users) != 2 or sub.outputs[0] in view.graph.outputs:
        return None
    pow_ = next((u for u in users if u.op_type == "Pow" and u.inputs[0] == sub.outputs[0]), None)
    div = next((u for u in users if u.op_type == "Div" and u.inputs[0] == sub.outputs[0]), None)
    if pow_ is None or div is None or view.scalar(pow_.inputs[1]) != 2.0:
        return None
    var = view.only_user(pow_.outputs[0], "ReduceMean")
    if var is None or not _last_axis_mean(view, var):
        return None
    add = view.only_user(var.outputs[0], "Add")
    eps = None if add is None else view.scalar(view.other(add, var.outputs[0]))
    sqrt = None if add is None else view.only_user(add.outputs[0], "Sqrt")
    if eps is None or sqrt is None or view.only_user(sqrt.outputs[0], "Div") is not div:
        return None
    if div.inputs[1] != sqrt.outputs[0]:
        return None
    nodes, out, gamma, beta = [mean, sub, pow_, var, add, sqrt, div], div.outputs[0], None, None
    d = view.graph.shapes[x][-1]
    for op_type in ("Mul", "Add"):
        step = view.only_user(out, op_type)
        c = None if step is None else view.graph.const(view.other(step, out))
        if c is None or np.size(c) not in (1, d) or (np.ndim(c) > 1 and np.shape(c)[-1] != np.size(c)):
            if op_type == "Mul":
                continue
            break
        if op_type == "Mul":
            gamma = np.asarray(c, np.float64).reshape(-1)
        else:
            beta = np.asarray(c, np.float64).reshape(-1)
        nodes.append(step)
        out = step.outputs[0]
    return view.match(
        "LayerNormalization(ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add)",
        nodes,
        _convert_layer_norm,
        x=x,
        output=out,
        gamma=gamma,
        beta=beta,
        eps=eps,
    )


def _convert_layer_norm(ctx: Context, match: Match) -> None:
    p = match.params
    emit_layer_norm(ctx, ctx.val(p["x"]), p["gamma"], p["beta"], p["eps"], p["output"])


_SQRT2 = math.sqrt(2.0)


def _half_x_times(view: _View, one_plus: OnnxNode, x: str) -> tuple[list[OnnxNode], str] | None:
    """The ``0.5 * x * one_plus`` that ends both GELU chains: ``(nodes, output)``.

    The two multiplications may come in either order: ``(x * (1 + f)) * 0.5``,
    ``x * ((1 + f) * 0.5)`` or ``(x * 0.5) * (1 + f)``.
    """
    first = view.only_user(one_plus.outputs[0], "Mul")
    if first is None:
        return None
    partner = view.other(first, one_plus.outputs[0])
    half_of_x = view.producer.get(partner)
    if partner == x:  # (x * (1 + f)) * 0.5
        second = view.only_user(first.outputs[0], "Mul")
        half = None if second is None else view.scalar(view.other(second, first.outputs[0]))
        nodes = [first, second]
    elif view.scalar(partner) == 0.5:  # x * ((1 + f) * 0.5)
        second = view.only_user(first.outputs[0], "Mul")
        half = 0.5 if second is not None and view.other(second, first.outputs[0]) == x else None
        nodes = [first, second]
    elif (
        half_of_x is not None
        and half_of_x.op_type == "Mul"
        and view.only_user(partner, "Mul") is first
        and x in half_of_x.inputs
    ):  # (x * 0.5) * (1 + f)
        second = first
        half = view.scalar(view.other(half_of_x, x))
        nodes = [half_of_x, first]
    else:
        return None
    if second is None or half != 0.5:
        return None
    return nodes, second.outputs[0]


def _match_gelu(view: _View, erf: OnnxNode) -> Match | None:
    """``Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul, Mul`` with ``x`` and ``0.5``
    (the multiplications in any order, see `_half_x_times`)."""
    scale = view.producer.get(erf.inputs[0])
    if (
        scale is None
        or scale.op_type not in ("Div", "Mul")
        or view.only_user(scale.outputs[0], "Erf") is not erf
    ):
        return None
    x = scale.inputs[0]
    c = view.scalar(scale.inputs[1])
    want = _SQRT2 if scale.op_type == "Div" else 1.0 / _SQRT2
    if c is None or abs(c - want) > 1e-4 or view.graph.const(x) is not None:
        return None
    add = view.only_user(erf.outputs[0], "Add")
    if add is None or view.scalar(view.other(add, erf.outputs[0])) != 1.0:
        return None
    tail = _half_x_times(view, add, x)
    if tail is None:
        return None
    return view.match(
        "Gelu(Div/Erf/Add/Mul/Mul)", [scale, erf, add, *tail[0]], _convert_gelu, x=x, output=tail[1]
    )


_TANH_GELU_SCALE = math.sqrt(2.0 / math.pi)
_TANH_GELU_CUBIC = 0.044715


def _close(value: float | None, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-4 * want


def _match_gelu_tanh(view: _View, tanh: OnnxNode) -> Match | None:
    """``x + 0.044715 * Pow(x, 3) -> Mul(sqrt(2/pi)) -> Tanh -> Add(1) -> Mul, Mul`` with ``x`` and ``0.5``.

    GPT-2's ``gelu_new`` (``NewGELUActivation``) as PyTorch's exporter writes it below
    opset 20; the multiplications in any order (see `_half_x_times`).
    """
    scale = view.producer.get(tanh.inputs[0])
    if scale is None or scale.op_type != "Mul" or view.only_user(scale.outputs[0], "Tanh") is not tanh:
        return None
    inner = next((n for n in scale.inputs if view.graph.const(n) is None), None)
    if inner is None or not _close(view.scalar(view.other(scale, inner)), _TANH_GELU_SCALE):
        return None
    add = view.producer.get(inner)
    if add is None or add.op_type != "Add" or view.only_user(inner, "Mul") is not scale:
        return None
    for x, term in (add.inputs[:2], add.inputs[1::-1]):
        cubic = view.producer.get(term)
        if cubic is None or cubic.op_type != "Mul" or view.only_user(term, "Add") is not add:
            continue
        power_out = next((n for n in cubic.inputs if view.graph.const(n) is None), None)
        power = None if power_out is None else view.producer.get(power_out)
        if (
            power is not None
            and power.op_type == "Pow"
            and power.inputs[0] == x
            and view.scalar(power.inputs[1]) == 3.0
            and view.only_user(power_out, "Mul") is cubic
            and _close(view.scalar(view.other(cubic, power_out)), _TANH_GELU_CUBIC)
            and view.graph.const(x) is None
        ):
            break
    else:
        return None
    one_plus = view.only_user(tanh.outputs[0], "Add")
    if one_plus is None or view.scalar(view.other(one_plus, tanh.outputs[0])) != 1.0:
        return None
    tail = _half_x_times(view, one_plus, x)
    if tail is None:
        return None
    return view.match(
        "Gelu(tanh: Pow/Mul/Add/Mul/Tanh/Add/Mul/Mul)",
        [power, cubic, add, scale, tanh, one_plus, *tail[0]],
        _convert_gelu_tanh,
        x=x,
        output=tail[1],
    )


def _convert_gelu_tanh(ctx: Context, match: Match) -> None:
    emit_gelu(ctx, ctx.val(match.params["x"]), match.params["output"], approximate="tanh")


def _convert_gelu(ctx: Context, match: Match) -> None:
    emit_gelu(ctx, ctx.val(match.params["x"]), match.params["output"])


def _match_hard_swish(view: _View, hard_sigmoid: OnnxNode) -> Match | None:
    """``Mul(x, HardSigmoid(x, alpha=1/6, beta=1/2))``, either operand first: HardSwish as
    PyTorch's exporter writes it below opset 14, where ONNX has no HardSwish."""
    x = hard_sigmoid.inputs[0]
    alpha, beta = float(hard_sigmoid.attrs.get("alpha", 0.2)), float(hard_sigmoid.attrs.get("beta", 0.5))
    if not (_close(alpha, 1.0 / 6.0) and beta == 0.5) or view.graph.const(x) is not None:
        return None
    mul = view.only_user(hard_sigmoid.outputs[0], "Mul")
    if mul is None or view.other(mul, hard_sigmoid.outputs[0]) != x:
        return None
    return view.match(
        "HardSwish(HardSigmoid/Mul)", [hard_sigmoid, mul], _convert_hard_swish, x=x, output=mul.outputs[0]
    )


def _convert_hard_swish(ctx: Context, match: Match) -> None:
    node = OnnxNode("HardSwish", match.anchor, (match.params["x"],), (match.params["output"],), {})
    convert_hard_swish(ctx, node)


def _match_nan_guard(view: _View, isnan: OnnxNode) -> Match | None:
    """``Where(IsNaN(p), 0, p)`` on a ``Softmax`` output ``p``: the guard PyTorch's ``sdpa``
    attention exports for rows whose every key is masked (their softmax is NaN in float). The
    opset's softmax gives such a row zeros, which is what the guard writes, and no NaN otherwise:
    the guard is the identity on it."""
    p = isnan.inputs[0]
    softmax = view.producer.get(p)
    where = view.only_user(isnan.outputs[0], "Where")
    if softmax is None or softmax.op_type != "Softmax" or where is None or p in view.graph.outputs:
        return None
    if where.inputs[0] != isnan.outputs[0] or where.inputs[2] != p or view.scalar(where.inputs[1]) != 0.0:
        return None
    if {u.name for u in view.users(p)} != {isnan.name, where.name}:
        return None
    return view.match(
        "NanGuard(IsNaN/Where)", [isnan, where], _convert_nan_guard, value=p, output=where.outputs[0]
    )


def _convert_nan_guard(ctx: Context, match: Match) -> None:
    ctx.bind(match.params["output"], ctx.val(match.params["value"]))


def _const_vector(view: _View, name: str, n: int) -> np.ndarray | None:
    """A constant of ``n`` entries along its last axis only (a bias), as float64 ``(n,)``."""
    c = view.graph.const(name)
    if c is None or np.size(c) not in (1, n) or (np.ndim(c) > 1 and np.shape(c)[-1] != np.size(c)):
        return None
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n,))


def _match_conv1d(view: _View, flat: OnnxNode) -> Match | None:
    """``Reshape(x, [-1, K]) -> Gemm | MatMul [-> Add(bias)] -> Reshape(back to x's rows, N)``.

    What transformers' ``Conv1D`` (GPT-2's projections: ``addmm`` on ``x.view(-1, K)``) and
    ``nn.Linear`` on a flattened input export to: one product along the last axis, which
    folds the batch axis into the rows and back. Converted as that product on ``x``.
    """
    graph = view.graph
    x = flat.inputs[0]
    shape = graph.shapes.get(x)
    target = graph.const(flat.inputs[1]) if len(flat.inputs) > 1 else None
    if shape is None or len(shape) < 3 or target is None or graph.const(x) is not None:
        return None
    k = shape[-1]
    if [int(v) for v in np.asarray(target).reshape(-1)] != [-1, k]:
        return None
    product = view.only_user(flat.outputs[0], ("Gemm", "MatMul"))
    if product is None or product.inputs[0] != flat.outputs[0]:
        return None
    b = graph.const(product.inputs[1])
    if b is None or b.ndim != 2:
        return None
    nodes = [flat, product]
    if product.op_type == "Gemm":
        if product.attrs.get("transA", 0):
            return None
        weight = (b.T if product.attrs.get("transB", 0) else b) * float(product.attrs.get("alpha", 1.0))
        n = weight.shape[1]
        bias = np.zeros(n)
        if len(product.inputs) > 2 and product.inputs[2]:
            c = _const_vector(view, product.inputs[2], n)
            if c is None:
                return None
            bias = c * float(product.attrs.get("beta", 1.0))
        out = product.outputs[0]
    else:
        weight, out = b, product.outputs[0]
        n = weight.shape[1]
        bias = np.zeros(n)
        add = view.only_user(out, "Add")
        c = None if add is None else _const_vector(view, view.other(add, out), n)
        if c is not None:
            bias, out = c, add.outputs[0]
            nodes.append(add)
    if weight.shape[0] != k:
        return None
    back = view.only_user(out, "Reshape")
    back_target = None if back is None else graph.const(back.inputs[1])
    if back_target is None or back.inputs[0] != out:
        return None
    first, *rest = (int(v) for v in np.asarray(back_target).reshape(-1))
    if first not in (BATCH, -1) and first not in graph.exported_batches:
        return None
    if tuple(rest) != (*shape[1:-1], n):
        return None
    return view.match(
        f"Linear({'/'.join(node.op_type for node in nodes)}/Reshape)",
        [*nodes, back],
        _convert_conv1d,
        x=x,
        weight=np.asarray(weight, np.float64),
        bias=np.asarray(bias, np.float64),
        output=back.outputs[0],
    )


def _convert_conv1d(ctx: Context, match: Match) -> None:
    p = match.params
    x = ctx.onnx_order(ctx.int8(ctx.val(p["x"])))
    _emit_linear(ctx, x, p["weight"], p["bias"], p["output"])


# --------------------------------------------------------------------------- attention masks

MASK_FLOOR = -1e4
"""An additive mask entry at or below this removes its key (``exp(-1e4)`` is 0 in float32)."""

_MASK_OPS = frozenset(
    {
        "And",
        "Add",
        "Cast",
        "Concat",
        "ConstantOfShape",
        "Equal",
        "Expand",
        "Flatten",
        "Gather",
        "Greater",
        "GreaterOrEqual",
        "Identity",
        "Less",
        "LessOrEqual",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Range",
        "Reshape",
        "Shape",
        "Slice",
        "Squeeze",
        "Sub",
        "Unsqueeze",
        "Where",
    }
)
"""Op types a key mask may be built of from ``attention_mask`` at run time (what PyTorch's
exporter and transformers' mask helpers write once the shape chains are folded; transformers 5
indexes the mask with the row indices ``Range(0, batch)``: ``Flatten``, ``Gather``, ``Shape``)."""


def _mask_cone(view: _View, seeds: set[str]) -> dict[str, OnnxNode]:
    """Nodes computed from integer graph inputs (and constants) alone: value name -> producer.

    A node whose operands are all constants is here too when it did not fold: it computes
    with the batch size (the row indices ``Range(0, batch)``)."""
    cone: dict[str, OnnxNode] = {}
    for node in view.graph.nodes:
        live = [n for n in node.inputs if n and view.graph.const(n) is None]
        if node.op_type in _MASK_OPS and all(n in seeds or n in cone for n in live):
            cone.update({out: node for out in node.outputs if out})
    return cone


def _ancestors(cone: dict[str, OnnxNode], value: str, seeds: set[str]) -> tuple[list[OnnxNode], set[str]]:
    nodes, reached, stack = {}, set(), [value]
    while stack:
        name = stack.pop()
        if name in seeds:
            reached.add(name)
        elif name in cone and cone[name].name not in nodes:
            nodes[cone[name].name] = cone[name]
            stack.extend(n for n in cone[name].inputs if n)
    return list(nodes.values()), reached


def _probe_masks(t: int) -> np.ndarray:
    """0/1 key masks (rows) that tell a key mask from anything else: padding on either side, holes."""
    rows = [np.ones(t, np.int64)]
    for k in sorted({1, 2, t // 2, t - 1} - {0}):
        rows.append(np.r_[np.ones(t - k), np.zeros(k)])
        rows.append(np.r_[np.zeros(k), np.ones(t - k)])
    rng = np.random.default_rng(0)
    for _ in range(6):
        row = rng.integers(0, 2, t)
        row[rng.integers(t)] = 1
        rows.append(row)
    return np.array(rows, np.int64)


def _evaluator_name() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "onnx.reference"
    return f"onnxruntime {onnxruntime.__version__}"


def _evaluate_values(model, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Values of the original model for ``feeds`` (onnxruntime, else ``onnx.reference``).

    Only the nodes that the values need are run."""
    from onnx import helper

    producer = {out: node for node in model.graph.node for out in node.output}
    needed, stack = set(), list(names)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(n for n in node.input if n)
            for attr in node.attribute:  # subgraphs (If, Loop) read outer values too
                stack.extend(n for g in (attr.g, *attr.graphs) for sub in g.node for n in sub.input if n)
    nodes = [node for node in model.graph.node if id(node) in needed]
    read = {n for node in nodes for n in node.input}
    graph = helper.make_graph(
        nodes,
        "aivm_probe",
        [v for v in model.graph.input if v.name in read],
        [helper.make_empty_tensor_value_info(n) for n in names],
        initializer=[t for t in model.graph.initializer if t.name in read],
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    feeds = {v.name: feeds[v.name] for v in graph.input}
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(v) for v in ReferenceEvaluator(sub).run(names, feeds)]
    session = onnxruntime.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(names, feeds)]


def _keep_pattern(tq: int, tk: int, masks: np.ndarray, causal: bool) -> np.ndarray:
    """``(P, Tq, Tk)``: the opset softmax's kept positions for key masks ``masks`` (``P, Tk``)."""
    keep = np.broadcast_to((masks != 0)[:, None, :], (len(masks), tq, tk))
    if causal:
        keep = keep & (np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq))
    return keep


def _kept(value: np.ndarray, kind: str) -> np.ndarray | None:
    """Which scores a mask value keeps: ``kind`` is "add" (0 keeps, <= MASK_FLOOR drops),
    "where_true" or "where_false" (the condition value that keeps the scores)."""
    if kind == "add":
        value = np.asarray(value, np.float64)
        kept = value == 0
        return kept if np.all(kept | (value <= MASK_FLOOR)) else None
    cond = np.asarray(value).astype(bool)
    return cond if kind == "where_true" else ~cond


def _classify(kept: np.ndarray, masks: np.ndarray, scores_row: tuple[int, ...]) -> bool | None:
    """``causal`` if ``kept`` (broadcast to the scores) is the key mask, with or without the causal rule."""
    tq, tk = scores_row[-2], scores_row[-1]
    full = (len(masks), *scores_row)
    try:
        kept = np.broadcast_to(
            kept.reshape((kept.shape[0],) + (1,) * (len(full) - kept.ndim) + kept.shape[1:]), full
        )
    except ValueError:
        return None
    for causal in (False, True):
        want = _keep_pattern(tq, tk, masks, causal).reshape(len(masks), *([1] * (len(full) - 3)), tq, tk)
        if np.array_equal(kept, np.broadcast_to(want, full)):
            return causal
    return None


def _join(view: _View, node: OnnxNode, is_mask) -> tuple[str, str, str] | None:
    """``(scores, mask value, kind)`` when ``node`` applies a mask to scores that go to a Softmax."""
    if node.op_type == "Add":
        a, b = node.inputs[:2]
        if is_mask(b) and not is_mask(a):
            scores, mask, kind = a, b, "add"
        elif is_mask(a) and not is_mask(b):
            scores, mask, kind = b, a, "add"
        else:
            return None
    elif node.op_type == "Where":
        cond, x, y = node.inputs[:3]
        fill_x, fill_y = view.scalar(x), view.scalar(y)
        if not is_mask(cond):
            return None
        if fill_y is not None and fill_y <= MASK_FLOOR and view.graph.const(x) is None:
            scores, mask, kind = x, cond, "where_true"
        elif fill_x is not None and fill_x <= MASK_FLOOR and view.graph.const(y) is None:
            scores, mask, kind = y, cond, "where_false"
        else:
            return None
    else:
        return None
    if view.graph.const(scores) is not None:
        return None
    softmax = view.only_user(node.outputs[0], "Softmax")
    shape = view.graph.shapes.get(scores)
    if softmax is None or shape is None or len(shape) < 3:
        return None
    if int(softmax.attrs.get("axis", -1)) % len(shape) != len(shape) - 1:
        return None
    return scores, mask, kind


def match_masks(view: _View, model, int_inputs: set[str]) -> list[Match]:
    """Key masks and causal masks in front of a ``Softmax``, folded into the opset's softmax.

    A mask built at run time from an integer input (``attention_mask``) by the ops
    in `_MASK_OPS` -- transformers' extended masks ``(1 - m) * min``, ``Where``
    masks, causal masks combined with a key mask -- is recognised by what it
    computes: the original graph is run on 0/1 probe masks, and every kept or
    removed score must be exactly the opset softmax's key mask (or that with the
    causal rule). A constant causal mask is read directly. Each ``Add``/``Where``
    that applies such a mask to the scores of a ``Softmax`` becomes one masked
    softmax; the nodes that build the mask become one ``KeyMask`` match.
    """
    graph = view.graph
    cone = _mask_cone(view, int_inputs)
    is_mask = lambda n: n in cone or n in int_inputs or graph.const(n) is not None  # noqa: E731
    found = []
    for node in graph.nodes:
        joined = _join(view, node, is_mask)
        if joined is not None:
            found.append((node, *joined))
    if not found:
        return []
    runtime = [f for f in found if graph.const(f[2]) is None]
    probes = {}
    if runtime:
        seeds_of = {f[2]: _ancestors(cone, f[2], int_inputs)[1] for f in runtime}
        feeds = {}
        t = None
        for seed in set().union(*seeds_of.values()):
            t = graph.inputs[seed][-1] if graph.inputs[seed] else None
        if t is not None:
            masks = _probe_masks(t)
            types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
            from onnx import helper

            for name, row in graph.inputs.items():
                dtype = helper.tensor_dtype_to_np_dtype(types[name])
                if any(name in s for s in seeds_of.values()) and row == (t,):
                    feeds[name] = masks.astype(dtype)
                else:
                    feeds[name] = np.zeros((len(masks), *row), dtype)
            names = sorted(seeds_of)
            try:
                values = _evaluate_values(model, names, feeds)
            except Exception as error:  # without the probe no mask can be recognised
                raise OnnxImportError(
                    "cannot evaluate the graph's attention-mask subgraph to recognise the mask it "
                    f"builds ({_evaluator_name()}: {type(error).__name__}: {error}). "
                    "onnx.reference fails on some exporters' mask graphs; install onnxruntime "
                    "(pip install 'aivm_jax[onnx]') and import again."
                ) from None
            probes = {n: (v, masks) for n, v in zip(names, values)}
    matches, cone_nodes, masked_inputs = [], {}, {}
    for node, scores, mask, kind in found:
        scores_row = graph.shapes[scores][1:]
        softmax = view.only_user(node.outputs[0], "Softmax")
        if graph.const(mask) is not None:  # a constant causal mask (no attention_mask input)
            value = np.asarray(graph.const(mask))
            value = value.reshape((1,) * max(0, len(scores_row) + 1 - value.ndim) + value.shape)
            kept = _kept(value, kind)
            ones = np.ones((1, scores_row[-1]), np.int64)
            causal = None if kept is None or kept.shape[0] != 1 else _classify(kept, ones, scores_row)
            if causal:
                matches.append(
                    view.match(
                        f"CausalSoftmax({node.op_type}+Softmax)",
                        [node, softmax],
                        _convert_masked_softmax,
                        scores=scores,
                        output=softmax.outputs[0],
                        mask=None,
                        causal=True,
                    )
                )
            continue
        if mask not in probes:
            continue
        value, masks = probes[mask]
        nodes, seeds = _ancestors(cone, mask, int_inputs)
        kept = _kept(value, kind)
        if len(seeds) != 1 or kept is None or kept.shape[0] != len(masks):
            continue
        causal = _classify(kept, masks, scores_row)
        if causal is None:
            continue
        seed = seeds.pop()
        masked_inputs[seed] = masked_inputs.get(seed, 0) + 1
        cone_nodes.update({n.name: n for n in nodes})
        matches.append(
            view.match(
                f"MaskedSoftmax({node.op_type}+Softmax, {'causal' if causal else 'key'} mask from {seed})",
                [node, softmax],
                _convert_masked_softmax,
                scores=scores,
                output=softmax.outputs[0],
                mask=seed,
                causal=causal,
            )
        )
    if cone_nodes:
        consumed = set(cone_nodes) | {n for m in matches for n in m.nodes}
        for name, node in cone_nodes.items():
            for out in node.outputs:
                if any(u.name not in consumed for u in view.users(out)) or out in graph.outputs:
                    raise OnnxImportError(
                        f"the attention mask value {out!r} (node {name!r}) is also read outside the "
                        "attention softmaxes; only masks applied to attention scores are supported"
                    )
        matches.append(
            view.match(
                f"KeyMask({'/'.join(sorted({n.op_type for n in cone_nodes.values()}))} from "
                f"{', '.join(sorted(masked_inputs))})",
                list(cone_nodes.values()),
                None,
                inputs=tuple(sorted(masked_inputs)),
            )
        )
    return matches


def _convert_masked_softmax(ctx: Context, match: Match) -> None:
    p = match.params
    mask = None if p["mask"] is None else ctx.val(p["mask"]).name
    emit_softmax(ctx, ctx.val(p["scores"]), p["output"], mask=mask, causal=p["causal"])


def match_patterns(graph: OnnxGraph, model, int_inputs: set[str]) -> list[Match]:
    """Every transformer pattern of the graph (masks first; no node is consumed twice)."""
    view = _View(graph)
    matches = match_masks(view, model, int_inputs)
    taken = {n for m in matches for n in m.nodes}
    for node in graph.nodes:
        if node.name in taken:
            continue
        match = None
        if node.op_type == "ReduceMean":
            match = _match_layer_norm(view, node)
        elif node.op_type == "Erf":
            match = _match_gelu(view, node)
        elif node.op_type == "Tanh":
            match = _match_gelu_tanh(view, node)
        elif node.op_type == "Reshape":
            match = _match_conv1d(view, node)
        elif node.op_type == "HardSigmoid":
            match = _match_hard_swish(view, node)
        elif node.op_type == "IsNaN":
            match = _match_nan_guard(view, node)
        if match is not None and not taken & set(match.nodes):
            matches.append(match)
            taken.update(match.nodes)
    return matches
