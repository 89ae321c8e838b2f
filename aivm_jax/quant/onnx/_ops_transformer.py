"""Converters of the ONNX ops of transformers, one function per op type.

They map onto the opset the way the zoo's MiniLM is built
(`aivm_jax.models._minilm`, through the same `GraphBuilder` methods):
``layer_norm`` on an int32 residual stream, GELU and other one-input
functions as 256-entry tables, attention scores rescaled into the integer
softmax's ``2**-8``-bit units (the ``log2 e`` factor folded into the
requantization), probabilities with 15 fractional bits multiplied by the
values with ``batch_matmul``. A multiplication or division by a positive
constant only relabels the scale of the value; nothing is computed.

The opset has no slice: ``Slice``, ``Split`` and ``Gather`` of an activation
multiply by a 0/1 selection matrix (exact: every output is one int8 input).
"""

from __future__ import annotations

import math

import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.quant._graph import GELU_FLOOR, SOFTMAX_OUT_BITS, SOFTMAX_TABLE_BITS, exp2_table, gelu
from aivm_jax.quant.onnx._context import Context, Val
from aivm_jax.quant.onnx._graph import BATCH, OnnxGraph, OnnxNode
from aivm_jax.quant.onnx._ops import _ADD_MULTIPLIER_LIMIT, _per_channel_output, _shape, _widen
from aivm_jax.quant.onnx._registry import register

__all__ = ["convert_hard_swish", "emit_gelu", "emit_layer_norm", "emit_softmax", "int32_per_tensor"]

_RESIDUAL_BITS = 22
"""An int32 value made per-tensor maps its calibration maximum to ``2**22`` (as the adds do)."""

_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


# --------------------------------------------------------------------------- helpers


def int32_per_tensor(ctx: Context, x: Val) -> Val:
    """``x`` in ONNX order as int32 with one scale (what ``layer_norm`` and the softmax read)."""
    x = ctx.onnx_order(x)
    if ctx.dtype(x) == "int8":
        x = _widen(ctx, x)  # keeps a per-channel scale, requantized below
    if ctx.per_tensor(x):
        return x
    top = max(float(np.abs(ctx.builder.real(x.name)).max()), 1e-8)
    out = ctx.builder.requantize(
        x.name, ctx.fresh(f"{x.name}.i32"), out_dtype="int32", scale=top / 2**_RESIDUAL_BITS
    )
    return Val(out)


def _copy(ctx: Context, x: Val, scale, output: str) -> Val:
    """The same integers under a new name and scale (a reshape to the same shape)."""
    row = tuple(ctx.builder.values[x.name].shape[1:])
    out = ctx.builder.op("reshape", [x.name], ctx.fresh(output), scale, shape=row)
    return Val(out, x.channels_last)


def _rescale(ctx: Context, x: Val, scale: float, output: str) -> Val:
    """``x`` as int32 at the per-tensor ``scale``: one ``add`` with a zero second multiplier."""
    builder = ctx.builder
    n = builder.values[x.name].shape[-1]
    ratio = np.broadcast_to(np.asarray(builder.scales[x.name], np.float64), (n,)) / scale
    shift = np.clip(np.floor(np.log2((_ADD_MULTIPLIER_LIMIT - 1) / ratio.max())), 0, 62).astype(np.int32)
    multiplier = np.round(ratio * 2.0**shift)
    if multiplier.max() > _ADD_MULTIPLIER_LIMIT:
        raise ProgramError(f"{output}: scales differ too much to join these values")
    name = ctx.fresh(output)
    params = [
        builder.param(f"{name}.a_multiplier", multiplier.astype(np.int32)),
        builder.param(f"{name}.b_multiplier", np.int32(0)),
        builder.param(f"{name}.shift", shift),
    ]
    builder.op("add", [x.name, x.name, *params], name, scale, out_dtype="int32")
    return Val(name)


def _reshaped(ctx: Context, x: Val, target: tuple[int, ...], output: str) -> None:
    """Bind ``output`` to ``x`` reshaped to the row ``target``; int32 stays int32 where its scale allows."""
    x = ctx.onnx_order(x)
    row = ctx.shape(x)
    if tuple(target) == row:
        ctx.bind(output, x)
        return
    if ctx.dtype(x) == "int8" or not ctx.per_tensor(x):
        x = ctx.int8(x) if not (target and row and target[-1] == row[-1]) else x
    out = ctx.builder.op(
        "reshape", [x.name], ctx.fresh(output), ctx.builder.scales[x.name], shape=tuple(target)
    )
    ctx.bind(output, Val(out))


def _select(ctx: Context, x: Val, axis: int, indices: list[int], output: str, *, drop: bool = False) -> Val:
    """The entries ``indices`` of row axis ``axis`` of ``x`` (int32 at ``x``'s int8 scale).

    One ``matmul`` with a 0/1 selection matrix; ``transpose`` moves the axis last and back.
    ``drop`` removes the axis (a scalar index)."""
    x = ctx.int8(ctx.onnx_order(x))
    builder = ctx.builder
    row = ctx.shape(x)
    rank = len(row)
    selection = np.zeros((row[axis], len(indices)), np.int8)
    selection[indices, np.arange(len(indices))] = 1
    name = ctx.fresh(output)
    scale = builder.scales[x.name]
    source = x.name
    if axis != rank - 1:
        perm = [a for a in range(rank) if a != axis] + [axis]
        source = builder.op("transpose", [source], f"{name}.last", scale, perm=tuple(perm))
    builder.param(f"{name}.selection", selection)
    picked = builder.op("matmul", [source, f"{name}.selection"], f"{name}.picked", scale)
    shape = list(row)
    shape[axis] = len(indices)
    if axis != rank - 1:
        back = [0] * rank
        for i, a in enumerate(perm):
            back[a] = i
        picked = builder.op("transpose", [picked], f"{name}.back", scale, perm=tuple(back))
    if drop:
        del shape[axis]
    builder.op("reshape", [picked], name, scale, shape=tuple(shape) or (1,))
    return Val(name)


# --------------------------------------------------------------------------- shared emitters


def emit_layer_norm(ctx: Context, x: Val, gamma, beta, eps: float, output: str) -> None:
    """Layer normalization over the last axis, as MiniLM's: int32 in, int32 out (``layer_norm``)."""
    x = int32_per_tensor(ctx, x)
    d = ctx.shape(x)[-1]
    gamma = np.broadcast_to(np.asarray(1.0 if gamma is None else gamma, np.float64).reshape(-1), (d,))
    beta = np.broadcast_to(np.asarray(0.0 if beta is None else beta, np.float64).reshape(-1), (d,))
    out = ctx.builder.layer_norm(x.name, gamma, beta, float(eps), ctx.fresh(output))
    ctx.bind(output, Val(out))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def emit_gelu(ctx: Context, x: Val, output: str, *, approximate: str = "none") -> None:
    """GELU as MiniLM computes it: int8 over ``[-max(4, ...), max]``, then a 256-entry int32 table."""
    fn = gelu if approximate == "none" else _gelu_tanh
    builder = ctx.builder
    name = ctx.fresh(output)
    if ctx.dtype(x) == "int8" and ctx.per_tensor(x):
        x8 = x.name
    else:
        x = ctx.widen(x) if ctx.dtype(x) == "int8" else x  # requantize reads int32
        real = builder.real(x.name)
        top = max(float(real.max()), min(-float(real.min()), GELU_FLOOR), 1e-8)
        x8 = builder.requantize(x.name, f"{name}.in8", scale=top / 127.0)
    out = builder.table(x8, fn, name, out_dtype="int32")
    ctx.bind(output, Val(out, x.channels_last))


def _ones_mask(ctx: Context, z: Val) -> str:
    """An int8 ``(batch, Tk)`` mask of ones for a softmax with no key mask, built once per ``Tk``.

    The opset's softmax always reads a mask, and a program has no constant activations: the
    scores are reduced to ``(batch, Tk)`` (``argmax`` over the other axes), multiplied by zero
    (``requantize``) and mapped to 1 (``table``)."""
    builder = ctx.builder
    row = ctx.shape(z)
    key = ("ones", row[-1])
    if key not in ctx.shared:
        name = ctx.fresh(f"ones_mask.{row[-1]}")
        r = int(np.prod(row[:-1]))
        flat = builder.op("reshape", [z.name], f"{name}.rows", 1.0, shape=(r, row[-1]))
        moved = builder.op("transpose", [flat], f"{name}.keys", 1.0, perm=(1, 0))
        index = builder.op("argmax", [moved], f"{name}.index", 1.0, axis=-1)
        m = builder.param(f"{name}.zero", np.int32(0))
        s = builder.param(f"{name}.shift", np.int32(0))
        zero = builder.op("requantize", [index, m, s], f"{name}.zero8", 1.0, out_dtype="int8")
        builder.param(f"{name}.table", np.ones(256, np.int8))
        ctx.shared[key] = builder.op("table", [zero, f"{name}.table"], name, 1.0)
    return ctx.shared[key]


def emit_softmax(ctx: Context, x: Val, output: str, *, mask: str | None = None, causal: bool = False) -> None:
    """Softmax over the last axis with the opset's integer softmax.

    The input is rescaled to ``2**-8``-bit units (``log2 e`` folded into the
    multiplier) as int32; ``mask`` is the program's int8 ``(batch, Tk)`` key
    mask (an all-ones one when ``None``); the output holds probabilities with 15
    fractional bits (int32), which a following product reads as they are.
    """
    builder = ctx.builder
    x = int32_per_tensor(ctx, x)
    row = ctx.shape(x)
    name = ctx.fresh(output)
    if len(row) < 2:  # (batch, C): the opset's softmax wants (batch, ..., Tq, Tk)
        x = Val(builder.op("reshape", [x.name], f"{name}.rows", builder.scales[x.name], shape=(1, *row)))
    bits_scale = 1.0 / (math.log2(math.e) * 2**SOFTMAX_TABLE_BITS)
    z = Val(builder.requantize(x.name, f"{name}.z", out_dtype="int32", scale=bits_scale))
    if "exp2" not in ctx.shared:
        ctx.shared["exp2"] = builder.param(ctx.fresh("softmax.exp2"), exp2_table())
    mask = mask if mask is not None else _ones_mask(ctx, z)
    scale = 2.0**-SOFTMAX_OUT_BITS
    attrs = {"causal": causal, "out_bits": SOFTMAX_OUT_BITS}
    if len(row) < 2:
        p = builder.op("softmax", [z.name, mask, ctx.shared["exp2"]], f"{name}.p", scale, **attrs)
        out = builder.op("reshape", [p], name, scale, shape=row)
    else:
        out = builder.op("softmax", [z.name, mask, ctx.shared["exp2"]], name, scale, **attrs)
    ctx.probabilities.add(out)
    ctx.bind(output, Val(out))


# --------------------------------------------------------------------------- normalization, activations


def _last_axis(graph: OnnxGraph, node: OnnxNode, default: int) -> str | None:
    shape = _shape(graph, node.inputs[0])
    axis = int(node.attrs.get("axis", default))
    if shape is None or len(shape) < 2 or axis % len(shape) != len(shape) - 1:
        return f"only axis=-1 (the last axis, not the batch axis) is supported, got axis={axis} of {shape}"
    return None


def _check_layer_norm(graph, node):
    reason = _last_axis(graph, node, -1)
    if reason:
        return reason
    for index in (1, 2):
        if index < len(node.inputs) and node.inputs[index] and graph.const(node.inputs[index]) is None:
            return f"its {'scale' if index == 1 else 'bias'} must be a constant"
    if any(node.outputs[1:]):
        return "the Mean and InvStdDev outputs are not supported"
    return None


@register("LayerNormalization", opsets=(17, 20), check=_check_layer_norm)
def _layer_normalization(ctx: Context, node: OnnxNode) -> None:
    beta = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    eps = float(node.attrs.get("epsilon", 1e-5))
    emit_layer_norm(ctx, ctx.node_input(node), ctx.const(node.inputs[1]), beta, eps, node.outputs[0])


def _check_gelu(graph, node):
    if node.attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"approximate={node.attrs['approximate']!r} is not supported"
    return None


@register("Gelu", opsets=(20, 20), check=_check_gelu)
def _gelu(ctx: Context, node: OnnxNode) -> None:
    emit_gelu(ctx, ctx.node_input(node), node.outputs[0], approximate=node.attrs.get("approximate", "none"))


def _check_softmax(graph, node):
    return _last_axis(graph, node, -1)


@register("Softmax", check=_check_softmax)
def _softmax(ctx: Context, node: OnnxNode) -> None:
    emit_softmax(ctx, ctx.node_input(node), node.outputs[0])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _table_op(fn, cap: float | None = None, flat_below: float | None = None):
    """A converter computing the one-input function ``fn(x, attrs)`` as a 256-entry table.

    The input is int8 over ``[-cap, cap]`` (its calibration range, at most ``cap``); when
    ``fn`` is constant below ``-flat_below`` (HardSwish), the range's negative side stops
    there. The output is int8, or int32 (the table's values to 24 bits) when every reader
    requantizes it to int8 with one scale per channel.
    """

    def convert(ctx: Context, node: OnnxNode) -> None:
        x = ctx.node_input(node)
        if flat_below is not None and not (ctx.dtype(x) == "int8" and ctx.per_tensor(x)):
            x = ctx.widen(x) if ctx.dtype(x) == "int8" else x  # requantize reads int32
            real = ctx.builder.real(x.name)
            top = max(float(real.max()), min(-float(real.min()), flat_below), 1e-8)
            out = ctx.builder.requantize(x.name, ctx.fresh(f"{x.name}.q8"), scale=top / 127.0)
            x = Val(out, x.channels_last)
        else:
            x = ctx.int8(x, cap=cap)
        out_dtype = "int32" if _per_channel_output(ctx, node) else "int8"
        out = ctx.builder.table(
            x.name, lambda v: fn(v, node.attrs), ctx.fresh(node.outputs[0]), out_dtype=out_dtype
        )
        ctx.bind(node.outputs[0], Val(out, x.channels_last))

    return convert


def _erf(x):
    from scipy.special import erf  # scipy comes with scikit-learn

    return erf(x)


def _hard_sigmoid(x, attrs):
    return np.clip(float(attrs.get("alpha", 0.2)) * x + float(attrs.get("beta", 0.5)), 0.0, 1.0)


register("Sigmoid")(_table_op(lambda x, a: _sigmoid(x), cap=8.0))
register("Tanh")(_table_op(lambda x, a: np.tanh(x), cap=4.0))
register("Erf")(_table_op(lambda x, a: _erf(x), cap=3.0))
register("HardSigmoid")(_table_op(_hard_sigmoid))
convert_hard_swish = register("HardSwish", opsets=(14, 20))(
    _table_op(lambda x, a: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0), flat_below=3.0)
)
"""HardSwish as one table; also what ``x * HardSigmoid(x)`` becomes (opset 13 exports)."""
register("LeakyRelu")(_table_op(lambda x, a: np.where(x >= 0, x, float(a.get("alpha", 0.01)) * x)))


def _only_in_pattern(what: str):
    def check(graph, node):
        return f"supported only inside {what}, and this node is not part of one"

    return check


def _never(ctx: Context, node: OnnxNode) -> None:  # its check always refuses
    raise ProgramError(f"{node.op_type} {node.name!r} has no converter of its own")


_POW_CHAINS = "the decomposed LayerNormalization chain or the tanh GELU chain"
register("Pow", check=_only_in_pattern(_POW_CHAINS))(_never)
register("Sqrt", check=_only_in_pattern("the decomposed LayerNormalization chain"))(_never)
register("IsNaN", check=_only_in_pattern("a Where(IsNaN(p), 0, p) guard on a Softmax output"))(_never)


def _only_constant(graph, node):
    return "supported only when it folds to a constant, and its inputs are not constant"


# Index plumbing that folds once the sequence length is bound: BertEmbeddings gathers its
# all-zero token_type_ids buffer at the position ids (``torch.gather``). A node whose inputs are
# all constant folds before any check; one that does not is refused here.
register("GatherElements", check=_only_constant)(_never)


def _check_cast(graph, node):
    if graph.const(node.inputs[0]) is None and int(node.attrs.get("to", 0)) not in _FLOAT_TYPES:
        return "a cast of an activation to an integer type is supported only inside an attention mask"
    return None


@register("Cast", check=_check_cast)
def _cast(ctx: Context, node: OnnxNode) -> None:  # float -> float: the same real values
    ctx.bind(node.outputs[0], ctx.node_input(node))


# --------------------------------------------------------------------------- products by constants


def _factor(graph: OnnxGraph, node: OnnxNode) -> tuple[str, np.ndarray] | str:
    """``(activation, factor)`` of a ``Mul``/``Div`` by a constant, or why it is not one."""
    a, b = node.inputs[:2]
    ca, cb = graph.const(a), graph.const(b)
    if node.op_type == "Div":
        if ca is not None:
            return "constant / activation is not supported"
        return (
            (a, 1.0 / np.asarray(cb, np.float64))
            if cb is not None
            else "a division of two activations is not supported"
        )
    if ca is None and cb is None:
        return "two activations"
    act, c = (b, ca) if ca is not None else (a, cb)
    return act, np.asarray(c, np.float64)


def _factor_axis(graph: OnnxGraph, act: str, c: np.ndarray) -> int | str:
    """-1 for a scalar factor, else the ONNX axis it varies along; or why it is not supported."""
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        return "only positive finite constant factors are supported"
    if c.size == 1:
        return -1
    shape = _shape(graph, act)
    if shape is None:
        return "the activation's shape is unknown"
    full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape) if c.ndim <= len(shape) else c
    varying = [i for i, d in enumerate(full.shape) if d != 1]
    channel = 1 if len(shape) == 4 else len(shape) - 1
    if full.ndim != len(shape) or varying != [channel] or full.shape[channel] != shape[channel]:
        return f"a factor of shape {c.shape} for {shape}: only scalars and per-channel factors are supported"
    return channel


def _check_mul(graph, node):
    found = _factor(graph, node)
    if isinstance(found, str):
        if found != "two activations":
            return found
        sa, sb = _shape(graph, node.inputs[0]), _shape(graph, node.inputs[1])
        if sa is not None and sb is not None and sa != sb:
            return f"operands of shapes {sa} and {sb}: broadcasting two activations is not supported"
        return None
    axis = _factor_axis(graph, *found)
    return axis if isinstance(axis, str) else None


@register("Mul", check=_check_mul)
@register("Div", check=_check_mul)
def _mul(ctx: Context, node: OnnxNode) -> None:
    found = _factor(ctx.graph, node)
    if isinstance(found, str):  # two activations of one shape: an elementwise product
        _elementwise_product(ctx, ctx.node_input(node, 0), ctx.node_input(node, 1), node.outputs[0])
        return
    act, c = found
    x = ctx.val(act)
    axis = _factor_axis(ctx.graph, act, c)
    if axis == -1:
        scale = np.asarray(ctx.builder.scales[x.name], np.float64) * float(c.reshape(-1)[0])
        ctx.bind(node.outputs[0], _copy(ctx, x, float(scale) if scale.ndim == 0 else scale, node.outputs[0]))
        return
    if len(ctx.shape(x)) == 3:
        x = ctx.nhwc(x)
    if ctx.dtype(x) == "int8":
        x = _widen(ctx, x)
    n = ctx.builder.values[x.name].shape[-1]
    scale = np.broadcast_to(np.asarray(ctx.builder.scales[x.name], np.float64), (n,)) * c.reshape(-1)
    ctx.bind(node.outputs[0], _copy(ctx, x, scale, node.outputs[0]))


def _elementwise_product(ctx: Context, a: Val, b: Val, output: str) -> None:
    """``a * b`` of two activations of one shape: a ``batch_matmul`` of ``(N, 1, 1)`` rows."""
    a, b = ctx.int8(ctx.onnx_order(a)), ctx.int8(ctx.onnx_order(b))
    builder = ctx.builder
    row = ctx.shape(a)
    n = int(np.prod(row))
    name = ctx.fresh(output)
    cols = [
        builder.op("reshape", [v.name], f"{name}.{k}", builder.scales[v.name], shape=(n, 1, 1))
        for k, v in (("a", a), ("b", b))
    ]
    scale = float(builder.scales[a.name]) * float(builder.scales[b.name])
    product = builder.op("batch_matmul", cols, f"{name}.product", scale)
    builder.op("reshape", [product], name, scale, shape=row)
    ctx.bind(output, Val(name))


# --------------------------------------------------------------------------- layout


def _check_transpose(graph, node):
    perm = node.attrs.get("perm")
    shape = _shape(graph, node.inputs[0])
    if perm is None or not perm or perm[0] != 0:
        return f"perm {perm} moves the batch axis (only perms that keep axis 0 first are supported)"
    if shape is not None and len(perm) != len(shape):
        return f"perm {perm} does not match the rank of {shape}"
    return None


@register("Transpose", check=_check_transpose)
def _transpose(ctx: Context, node: OnnxNode) -> None:
    perm = [int(p) for p in node.attrs["perm"]]
    x = ctx.onnx_order(ctx.node_input(node))
    if perm == list(range(len(perm))):
        ctx.bind(node.outputs[0], x)
        return
    if not ctx.per_tensor(x) and perm[-1] != len(perm) - 1:
        x = ctx.int8(x)  # a per-channel scale must stay on the last axis
    out = ctx.builder.op(
        "transpose",
        [x.name],
        ctx.fresh(node.outputs[0]),
        ctx.builder.scales[x.name],
        perm=tuple(p - 1 for p in perm[1:]),
    )
    ctx.bind(node.outputs[0], Val(out))


def _check_squeeze(graph, node):
    shape, out = _shape(graph, node.inputs[0]), _shape(graph, node.outputs[0])
    if len(node.inputs) > 1 and node.inputs[1] and graph.const(node.inputs[1]) is None:
        return "its axes must be a constant"
    if shape is None or out is None or out[:1] != (BATCH,):
        return f"only (un)squeezing axes other than the batch axis is supported ({shape} -> {out})"
    return None


@register("Squeeze", check=_check_squeeze)
@register("Unsqueeze", check=_check_squeeze)
def _squeeze(ctx: Context, node: OnnxNode) -> None:
    _reshaped(ctx, ctx.node_input(node), ctx.graph.shapes[node.outputs[0]][1:], node.outputs[0])


# --------------------------------------------------------------------------- gather, slices, concat


def _axis(graph: OnnxGraph, node: OnnxNode, default: int = 0) -> int | None:
    shape = _shape(graph, node.inputs[0])
    return None if shape is None else int(node.attrs.get("axis", default)) % len(shape)


def _check_gather(graph, node):
    data, indices = graph.const(node.inputs[0]), graph.const(node.inputs[1])
    if data is not None:
        if node.inputs[1] not in graph.inputs:
            return "a constant table must be indexed by a graph input (token ids)"
        if data.ndim != 2 or node.attrs.get("axis", 0) != 0:
            return f"only rows of a (V, D) table are supported, got a table {data.shape}, axis {node.attrs.get('axis', 0)}"
        return None
    if indices is None:
        return "gathering from an activation with computed indices is not supported"
    axis = _axis(graph, node)
    if axis in (None, 0) or indices.ndim > 1:
        return f"only constant scalar or 1-D indices along a non-batch axis are supported (axis {axis})"
    return None


@register("Gather", check=_check_gather)
def _gather(ctx: Context, node: OnnxNode) -> None:
    builder = ctx.builder
    data = ctx.const(node.inputs[0])
    if data is not None:  # an embedding: int8 rows with one scale per column, then int32
        name = ctx.fresh(node.outputs[0])
        table = builder.embedding_table(f"{name}.table", np.asarray(data, np.float64))
        ids = ctx.node_input(node, 1)
        rows = builder.op("gather", [ids.name, table], f"{name}.rows", builder.scales[table])
        ctx.bind(node.outputs[0], _widen(ctx, Val(rows)))
        return
    indices = np.asarray(ctx.const(node.inputs[1]))
    axis = _axis(ctx.graph, node)
    size = ctx.graph.shapes[node.inputs[0]][axis]
    picks = [int(i) % size for i in indices.reshape(-1)]
    ctx.bind(
        node.outputs[0],
        _select(ctx, ctx.node_input(node), axis - 1, picks, node.outputs[0], drop=indices.ndim == 0),
    )


def _slice_spec(graph: OnnxGraph, node: OnnxNode) -> dict[int, list[int]] | str:
    shape = _shape(graph, node.inputs[0])
    consts = [graph.const(n) if i < len(node.inputs) and n else None for i, n in enumerate(node.inputs)]
    if shape is None or any(node.inputs[i] and consts[i] is None for i in range(1, len(node.inputs))):
        return "starts, ends, axes and steps must be constants"
    starts, ends = consts[1].reshape(-1), consts[2].reshape(-1)
    axes = consts[3].reshape(-1) if len(consts) > 3 and consts[3] is not None else np.arange(len(starts))
    steps = consts[4].reshape(-1) if len(consts) > 4 and consts[4] is not None else np.ones(len(starts), int)
    picks = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % len(shape)
        clamp = lambda v: max(min(int(v), 2**62), -(2**62))  # noqa: E731  (INT64_MAX means "to the end")
        chosen = list(range(*slice(clamp(start), clamp(end), int(step)).indices(shape[axis])))
        if axis == 0:
            if chosen != list(range(shape[0])):
                return "slicing the batch axis is not supported"
            continue
        if not chosen:
            return f"the slice of axis {axis} is empty"
        picks[axis] = chosen
    return picks


def _check_slice(graph, node):
    found = _slice_spec(graph, node)
    return found if isinstance(found, str) else None


@register("Slice", check=_check_slice)
def _slice(ctx: Context, node: OnnxNode) -> None:
    x = ctx.node_input(node)
    for axis, chosen in sorted(_slice_spec(ctx.graph, node).items()):
        if chosen != list(range(ctx.graph.shapes[node.inputs[0]][axis])):
            x = _select(ctx, x, axis - 1, chosen, node.outputs[0])
    ctx.bind(node.outputs[0], x)


def _split_sizes(graph: OnnxGraph, node: OnnxNode) -> list[int] | str:
    shape, axis = _shape(graph, node.inputs[0]), _axis(graph, node)
    if shape is None or axis in (None, 0):
        return "only splits along a non-batch axis of a known shape are supported"
    if len(node.inputs) > 1 and node.inputs[1]:
        sizes = graph.const(node.inputs[1])
        if sizes is None:
            return "its split sizes must be a constant"
        return [int(s) for s in sizes.reshape(-1)]
    if "split" in node.attrs:
        return [int(s) for s in node.attrs["split"]]
    parts = int(node.attrs.get("num_outputs", len(node.outputs)))
    step = -(-shape[axis] // parts)
    return [min(step, shape[axis] - i * step) for i in range(parts)]


def _check_split(graph, node):
    found = _split_sizes(graph, node)
    return found if isinstance(found, str) else None


@register("Split", check=_check_split)
def _split(ctx: Context, node: OnnxNode) -> None:
    axis = _axis(ctx.graph, node)
    start = 0
    for size, output in zip(_split_sizes(ctx.graph, node), node.outputs):
        if output:
            ctx.bind(
                output, _select(ctx, ctx.node_input(node), axis - 1, list(range(start, start + size)), output)
            )
        start += size


def _check_concat(graph, node):
    if any(graph.const(n) is not None for n in node.inputs):
        return "concatenating constants with activations is not supported"
    if _axis(graph, node) in (None, 0):
        return "only concatenation along a non-batch axis of a known shape is supported"
    return None


@register("Concat", check=_check_concat)
def _concat(ctx: Context, node: OnnxNode) -> None:
    builder = ctx.builder
    parts = [ctx.onnx_order(ctx.val(n)) for n in node.inputs]
    axis = _axis(ctx.graph, node)
    scales = {float(np.max(builder.scales[p.name])) for p in parts if ctx.per_tensor(p)}
    if (
        all(ctx.dtype(p) == "int8" for p in parts)
        and len(scales) == 1
        and all(ctx.per_tensor(p) for p in parts)
    ):
        scale = scales.pop()
    else:  # one int32 scale for all: the largest calibration maximum maps to 2**22
        top = max(max(float(np.abs(builder.real(p.name)).max()), 1e-8) for p in parts)
        scale = top / 2**_RESIDUAL_BITS
        parts = [_rescale(ctx, p, scale, f"{node.outputs[0]}.part{i}") for i, p in enumerate(parts)]
    out = builder.op("concat", [p.name for p in parts], ctx.fresh(node.outputs[0]), scale, axis=axis)
    ctx.bind(node.outputs[0], Val(out))
