"""Converters of the ONNX ops of MLPs and CNNs, one function per op type.

Each ``convert(ctx, node)`` maps one node onto opset ops through the
`GraphBuilder` (`aivm_jax.quant._graph`), which quantizes the way the zoo
does: int8 weights with one scale per output channel, int32 biases at the
accumulator's scale, int8 activations with one calibrated scale per tensor,
requantization by a 15-bit multiplier and a shift, rounding half up.
Each ``check`` says, before any conversion, why a node's form is not supported.
"""

from __future__ import annotations

import math

import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.quant._numerics import quantize_bias, quantize_weights
from aivm_jax.quant.onnx._context import Context, Val
from aivm_jax.quant.onnx._graph import BATCH, OnnxGraph, OnnxNode
from aivm_jax.quant.onnx._registry import register

__all__: list[str] = []

_ADD_MULTIPLIER_LIMIT = 2**30


# --------------------------------------------------------------------------- helpers


def _shape(graph: OnnxGraph, name: str) -> tuple[int, ...] | None:
    return graph.shapes.get(name)


def _need_const(graph: OnnxGraph, node: OnnxNode, index: int, what: str) -> str | None:
    if index < len(node.inputs) and node.inputs[index] and graph.const(node.inputs[index]) is None:
        return f"its {what} (input {index}) must be a constant (an initializer or a folded subgraph)"
    return None


def _window_check(graph: OnnxGraph, node: OnnxNode, kernel: tuple[int, ...]) -> str | None:
    shape = _shape(graph, node.inputs[0])
    if shape is None or len(shape) != 4 or len(kernel) != 2:
        return f"only 2-D windows over (batch, C, H, W) tensors are supported, got input shape {shape}"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']} is not supported; export with explicit pads"
    if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
        return f"dilations {node.attrs['dilations']} are not supported (only 1)"
    if node.attrs.get("ceil_mode", 0):
        return "ceil_mode=1 is not supported"
    pads = _pads(node)
    if any(p >= k for (lo, hi), k in zip(pads, kernel) for p in (lo, hi)):
        return f"pads {node.attrs.get('pads')} must each be smaller than the window {list(kernel)}"
    return None


def _pads(node: OnnxNode) -> tuple[tuple[int, int], tuple[int, int]]:
    if node.attrs.get("auto_pad", "NOTSET") == "VALID":
        return ((0, 0), (0, 0))
    top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
    return ((int(top), int(bottom)), (int(left), int(right)))


def _strides(node: OnnxNode) -> tuple[int, int]:
    sh, sw = node.attrs.get("strides", [1, 1])
    return (int(sh), int(sw))


def _fold_affine(ctx: Context, node: OnnxNode, weight: np.ndarray, bias: np.ndarray):
    """Apply a ``BatchNormalization`` folded into ``node`` to its weight (output channels last)."""
    if node.name in ctx.fused:
        a, c = ctx.fused[node.name]
        weight = weight * a
        bias = bias * a + c
    return weight, bias


def _emit_linear(ctx: Context, x: Val, weight: np.ndarray, bias: np.ndarray, output: str) -> None:
    out = ctx.builder.linear(x.name, weight, bias, ctx.fresh(output))
    ctx.bind(output, Val(out, x.channels_last))


def _bn_affine(graph: OnnxGraph, node: OnnxNode) -> tuple[np.ndarray, np.ndarray]:
    """``(a, c)`` with ``BatchNormalization(x) = a * x + c`` per channel (float64)."""
    gamma, beta, mean, var = (np.asarray(graph.const(n), np.float64) for n in node.inputs[1:5])
    a = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    return a, beta - mean * a


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _reads_per_channel(graph: OnnxGraph, node: OnnxNode) -> bool:
    """Whether ``node`` reads an int8 input with one scale per channel as it is.

    A convolution or a product by a constant folds the scales into its weight's input axis;
    an add of two activations rescales each operand per channel anyway; pools and the
    spatial mean work channel by channel."""
    if node.op_type in ("Gemm", "MatMul"):
        return graph.const(node.inputs[1]) is not None
    if node.op_type in ("Add", "Sub"):
        return all(graph.const(n) is None for n in node.inputs[:2])
    return node.op_type in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean")


def _per_channel_output(ctx: Context, node: OnnxNode) -> bool:
    """Whether ``node``'s output may have one scale per channel: every reader takes it as it is.

    Then a ``Relu``, ``Clip`` or table op requantizes channel by channel (or keeps its table's
    int32 values) instead of mapping the whole tensor to one int8 scale, which would leave a
    channel of small range a few levels (what breaks depthwise convolutions)."""
    out = node.outputs[0]
    readers = ctx.readers(out)
    return (
        bool(readers)
        and out not in ctx.graph.outputs
        and all(_reads_per_channel(ctx.graph, r) for r in readers)
    )


# --------------------------------------------------------------------------- aliases


@register("Identity")
def _identity(ctx: Context, node: OnnxNode) -> None:
    ctx.bind(node.outputs[0], ctx.node_input(node))


def _check_dropout(graph, node):
    if len(node.outputs) > 1 and node.outputs[1] and node.outputs[1] in graph.consumers():
        return "its mask output is used; only inference-mode Dropout (an identity) is supported"
    if len(node.inputs) > 2 and node.inputs[2]:
        training = graph.const(node.inputs[2])
        if training is None or bool(np.asarray(training)):
            return "training_mode must be a constant false"
    return None


@register("Dropout", check=_check_dropout)
def _dropout(ctx: Context, node: OnnxNode) -> None:
    ctx.bind(node.outputs[0], ctx.node_input(node))


# --------------------------------------------------------------------------- products


def _check_gemm(graph, node):
    if node.attrs.get("transA", 0):
        return "transA=1 is not supported"
    shape = _shape(graph, node.inputs[0])
    if shape is not None and len(shape) != 2:
        return f"input A must be (batch, K), got {shape}"
    for reason in (_need_const(graph, node, 1, "B"), _need_const(graph, node, 2, "C")):
        if reason:
            return reason
    b = graph.const(node.inputs[1])
    n = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
    if len(node.inputs) > 2 and node.inputs[2]:
        c = graph.const(node.inputs[2])
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return f"C must broadcast along the output features only, got shape {c.shape}"
    return None


@register("Gemm", check=_check_gemm)
def _gemm(ctx: Context, node: OnnxNode) -> None:
    x = ctx.int8(ctx.node_input(node), per_channel=True)
    b = np.asarray(ctx.const(node.inputs[1]), np.float64)
    weight = (b.T if node.attrs.get("transB", 0) else b) * float(node.attrs.get("alpha", 1.0))
    n = weight.shape[1]
    bias = np.zeros(n)
    if len(node.inputs) > 2 and node.inputs[2]:
        c = np.asarray(ctx.const(node.inputs[2]), np.float64).reshape(-1)
        bias = np.broadcast_to(c, (n,)) * float(node.attrs.get("beta", 1.0))
    weight, bias = _fold_affine(ctx, node, weight, bias)
    _emit_linear(ctx, x, weight, bias, node.outputs[0])


def _check_matmul(graph, node):
    if graph.const(node.inputs[0]) is not None:
        return (
            "a constant left operand is not supported (only activation @ constant or activation @ activation)"
        )
    if graph.const(node.inputs[1]) is None:
        sa, sb = _shape(graph, node.inputs[0]), _shape(graph, node.inputs[1])
        if sa is not None and sb is not None and (len(sa) != len(sb) or len(sa) < 3 or sa[1:-2] != sb[1:-2]):
            return (
                f"a product of two activations needs operands (batch, ..., M, K) and (batch, ..., K, N) "
                f"with the same leading axes, got {sa} and {sb}"
            )
        return None
    if graph.const(node.inputs[1]).ndim != 2:
        return f"the constant operand must be a (K, N) matrix, got {graph.const(node.inputs[1]).shape}"
    shape = _shape(graph, node.inputs[0])
    if shape is not None and len(shape) < 2:
        return f"the activation must have a feature axis besides the batch axis, got {shape}"
    return None


@register("MatMul", check=_check_matmul)
def _matmul(ctx: Context, node: OnnxNode) -> None:
    if ctx.const(node.inputs[1]) is None:
        _batch_matmul(ctx, ctx.node_input(node, 0), ctx.node_input(node, 1), node.outputs[0])
        return
    x = ctx.onnx_order(ctx.int8(ctx.node_input(node), per_channel=True))
    weight = np.asarray(ctx.const(node.inputs[1]), np.float64)
    weight, bias = _fold_affine(ctx, node, weight, np.zeros(weight.shape[1]))
    _emit_linear(ctx, x, weight, bias, node.outputs[0])


def _operand(ctx: Context, x: Val) -> Val:
    """``x`` as a `batch_matmul` operand: int8, or the int32 probabilities of a softmax (at most 2**15)."""
    x = ctx.onnx_order(x)
    return x if x.name in ctx.probabilities else ctx.int8(x)


def _batch_matmul(ctx: Context, a: Val, b: Val, output: str) -> Val:
    """``a @ b`` of two activations (attention's scores and context) as int32 at ``sa * sb``."""
    a, b = _operand(ctx, a), _operand(ctx, b)
    builder = ctx.builder
    scale = float(builder.scales[a.name]) * float(builder.scales[b.name])
    out = builder.op("batch_matmul", [a.name, b.name], ctx.fresh(output), scale)
    ctx.bind(output, Val(out))
    return Val(out)


def _check_conv(graph, node):
    reason = _need_const(graph, node, 1, "weight") or _need_const(graph, node, 2, "bias")
    if reason:
        return reason
    w = graph.const(node.inputs[1])
    if w.ndim != 4:
        return f"only 2-D convolutions are supported, got weight shape {w.shape}"
    return _window_check(graph, node, tuple(w.shape[2:]))


@register("Conv", check=_check_conv)
def _conv(ctx: Context, node: OnnxNode) -> None:
    x = ctx.nhwc(ctx.int8(ctx.node_input(node), per_channel=True))
    w = np.asarray(ctx.const(node.inputs[1]), np.float64)  # (O, C / group, KH, KW)
    out_channels, per_group, kh, kw = w.shape
    group = int(node.attrs.get("group", 1))
    channels = per_group * group
    # A grouped (or depthwise) convolution is a dense one whose weight is zero across groups.
    hwio = np.zeros((kh, kw, channels, out_channels))
    outs_per_group = out_channels // group
    for g in range(group):
        outs = slice(g * outs_per_group, (g + 1) * outs_per_group)
        hwio[:, :, g * per_group : (g + 1) * per_group, outs] = w[outs].transpose(2, 3, 1, 0)
    bias = np.zeros(out_channels)
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = np.asarray(ctx.const(node.inputs[2]), np.float64)
    hwio, bias = _fold_affine(ctx, node, hwio, bias)
    b = ctx.builder
    output = ctx.fresh(node.outputs[0])
    # A per-channel input scale is folded into the weight's input-channel axis before it is
    # quantized: exact for a depthwise convolution (each output reads one input channel).
    in_scale = np.asarray(b.scales[x.name], np.float64)
    if in_scale.ndim:
        q, acc_scale = quantize_weights(hwio * in_scale[:, None])
    else:
        q, w_scales = quantize_weights(hwio)
        acc_scale = w_scales * float(in_scale)
    b.param(f"{output}.weight", q)
    b.param(f"{output}.bias", quantize_bias(bias, acc_scale))
    attrs = {"strides": _strides(node), "padding": _pads(node)}
    acc = b.op("conv2d", [x.name, f"{output}.weight"], f"{output}.acc", acc_scale, **attrs)
    b.op("bias_add", [acc, f"{output}.bias"], output, acc_scale)
    ctx.bind(node.outputs[0], Val(output, True))


def _check_batch_norm(graph, node):
    if node.attrs.get("training_mode", 0):
        return "training_mode=1 is not supported (export the model in eval mode)"
    for i, what in enumerate(("scale", "bias", "mean", "var"), start=1):
        reason = _need_const(graph, node, i, what)
        if reason:
            return reason
    shape = _shape(graph, node.inputs[0])
    if shape is not None and len(shape) not in (2, 4):
        return f"only (batch, C) and (batch, C, H, W) inputs are supported, got {shape}"
    return None


@register("BatchNormalization", check=_check_batch_norm)
def _batch_norm(ctx: Context, node: OnnxNode) -> None:
    if node.name in ctx.absorbed:  # folded into the layer before it
        ctx.bind(node.outputs[0], ctx.node_input(node))
        return
    a, c = _bn_affine(ctx.graph, node)
    x = ctx.int8(ctx.node_input(node))
    if len(ctx.shape(x)) == 3:
        x = ctx.nhwc(x)
    # y = a * x + c per channel: a diagonal product, so each channel keeps its own int8 weight.
    _emit_linear(ctx, x, np.diag(a), c, node.outputs[0])


# --------------------------------------------------------------------------- elementwise


def _channel_vector(
    graph: OnnxGraph, act_shape: tuple[int, ...], c: np.ndarray
) -> tuple[np.ndarray, int] | None:
    """A constant that varies along one ONNX axis of the activation at most: ``(vector, axis)``.

    ``axis`` is -1 for a scalar. ``None`` when the constant varies along more axes
    or does not broadcast to ``act_shape`` without growing it."""
    c = np.asarray(c, np.float64)
    if c.size == 1:
        return c.reshape(1), -1
    rank = len(act_shape)
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    varying = [axis for axis, d in enumerate(full.shape) if d != 1]
    if len(varying) != 1 or varying[0] == 0 or full.shape[varying[0]] != act_shape[varying[0]]:
        return None
    return full.reshape(-1), varying[0]


def _check_add(graph, node):
    a, b = node.inputs[:2]
    ca, cb = graph.const(a), graph.const(b)
    if ca is not None and cb is not None:
        return "both operands are constant"  # folded already; defensive
    if ca is None and cb is None:
        sa, sb = _shape(graph, a), _shape(graph, b)
        if sa is not None and sb is not None and sa != sb:
            return f"operands of shapes {sa} and {sb}: broadcasting two activations is not supported"
        return None
    if node.op_type == "Sub" and ca is not None:
        return "constant - activation is not supported"
    act, c = (b, ca) if ca is not None else (a, cb)
    shape = _shape(graph, act)
    if shape is None:
        return None
    if len(shape) < 2 or not _fits_row(np.shape(c), shape):
        return (
            f"a constant of shape {np.shape(c)} added to {shape}: the constant must broadcast to the "
            "activation without growing it or varying along the batch axis"
        )
    return None


def _fits_row(c_shape: tuple[int, ...], act_shape: tuple[int, ...]) -> bool:
    """A constant of ``c_shape`` broadcasts to ``act_shape`` unchanged, constant along the batch axis."""
    if len(c_shape) > len(act_shape):
        return False
    full = (1,) * (len(act_shape) - len(c_shape)) + tuple(c_shape)
    return full[0] == 1 and all(c in (1, a) for c, a in zip(full[1:], act_shape[1:]))


def _add_two(ctx: Context, a: Val, b: Val, sign: int, output: str) -> Val:
    """``a + sign * b`` (same shapes) as int32 at a scale whose calibration maximum is ``2**22``."""
    builder = ctx.builder
    if len(ctx.shape(a)) == 3 and a.channels_last != b.channels_last:  # rank 4 with the batch axis
        a, b = ctx.nhwc(a), ctx.nhwc(b)
    total = np.abs(builder.real(a.name) + sign * builder.real(b.name))
    scale = max(float(total.max()), 1e-8) / 2.0**22
    n = builder.values[a.name].shape[-1]
    ra = np.broadcast_to(np.asarray(builder.scales[a.name], np.float64), (n,)) / scale
    rb = np.broadcast_to(np.asarray(builder.scales[b.name], np.float64), (n,)) / scale
    largest = np.maximum(ra, rb)
    shift = np.clip(np.floor(np.log2((_ADD_MULTIPLIER_LIMIT - 1) / largest)), 0, 62).astype(np.int32)
    ma, mb = np.round(ra * 2.0**shift), sign * np.round(rb * 2.0**shift)
    if max(np.abs(ma).max(), np.abs(mb).max()) > _ADD_MULTIPLIER_LIMIT:
        raise ProgramError(f"{output}: the operands' scales differ too much for one add")
    name = ctx.fresh(output)
    params = [
        builder.param(f"{name}.a_multiplier", ma.astype(np.int32)),
        builder.param(f"{name}.b_multiplier", mb.astype(np.int32)),
        builder.param(f"{name}.shift", shift),
    ]
    builder.op("add", [a.name, b.name, *params], name, scale, out_dtype="int32")
    return Val(name, a.channels_last)


def _widen(ctx: Context, x: Val) -> Val:
    """An int8 value as int32 at a ``2**16`` times finer scale (``x * 2**16``, exact)."""
    return ctx.widen(x)


def _add_constant(ctx: Context, x: Val, c: np.ndarray, output: str) -> None:
    row = ctx.shape(x)
    found = _channel_vector(ctx.graph, (1, *row), c)
    channel_axis = 1 if len(row) == 3 else len(row)
    if found is None or found[1] not in (-1, channel_axis):
        _add_full_constant(ctx, x, c, output)
        return
    vector, axis = found
    if axis == 1 and len(row) == 3:
        x = ctx.nhwc(x)
    if ctx.dtype(x) == "int8":
        x = _widen(ctx, x)
    builder = ctx.builder
    n = builder.values[x.name].shape[-1]
    scale = np.broadcast_to(np.asarray(builder.scales[x.name], np.float64), (n,))
    bias = np.broadcast_to(vector, (n,))
    name = ctx.fresh(output)
    builder.param(f"{name}.bias", quantize_bias(bias, scale))
    builder.op("bias_add", [x.name, f"{name}.bias"], name, builder.scales[x.name])
    ctx.bind(output, Val(name, x.channels_last))


def _add_full_constant(ctx: Context, x: Val, c: np.ndarray, output: str) -> None:
    """``x + c`` for a constant that varies along several axes (a position embedding, say).

    The row is flattened, one ``bias_add`` adds the flattened constant, and the
    row takes its shape back; a per-channel scale is tiled along the flat axis.
    """
    x = ctx.onnx_order(x)
    if ctx.dtype(x) == "int8":
        x = _widen(ctx, x)
    builder = ctx.builder
    row = ctx.shape(x)
    values = np.asarray(c, np.float64)
    if values.ndim > len(row):  # a leading batch axis of size 1
        values = values.reshape(values.shape[1:])
    values = np.broadcast_to(values, row)
    size = int(np.prod(row))
    scale = np.asarray(builder.scales[x.name], np.float64)
    flat_scale = np.broadcast_to(scale, row).reshape(-1) if scale.ndim else float(scale)
    name = ctx.fresh(output)
    flat = builder.op("reshape", [x.name], f"{name}.flat", flat_scale, shape=(size,))
    bias = quantize_bias(values.reshape(-1), np.broadcast_to(np.asarray(flat_scale), (size,)))
    builder.param(f"{name}.bias", bias)
    summed = builder.op("bias_add", [flat, f"{name}.bias"], f"{name}.sum", flat_scale)
    builder.op("reshape", [summed], name, builder.scales[x.name], shape=row)
    ctx.bind(output, Val(name))


@register("Add", check=_check_add)
@register("Sub", check=_check_add)
def _add(ctx: Context, node: OnnxNode) -> None:
    sign = -1 if node.op_type == "Sub" else 1
    a, b = node.inputs[:2]
    ca, cb = ctx.const(a), ctx.const(b)
    if ca is None and cb is None:
        ctx.bind(node.outputs[0], _add_two(ctx, ctx.val(a), ctx.val(b), sign, node.outputs[0]))
    elif ca is not None:
        _add_constant(ctx, ctx.val(b), ca, node.outputs[0])
    else:
        _add_constant(ctx, ctx.val(a), sign * np.asarray(cb, np.float64), node.outputs[0])


@register("Relu")
def _relu(ctx: Context, node: OnnxNode) -> None:
    x = ctx.int8(ctx.node_input(node), positive=True, per_channel=_per_channel_output(ctx, node))
    out = ctx.fresh(node.outputs[0])
    ctx.builder.op("relu", [x.name], out, ctx.builder.scales[x.name])
    ctx.bind(node.outputs[0], Val(out, x.channels_last))


def _clip_bounds(graph: OnnxGraph, node: OnnxNode) -> tuple[float, float]:
    lo = graph.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    hi = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


def _check_clip(graph, node):
    reason = _need_const(graph, node, 1, "min") or _need_const(graph, node, 2, "max")
    if reason:
        return reason
    lo, hi = _clip_bounds(graph, node)
    if not lo < hi:
        return f"min {lo} must be below max {hi}"
    return None


@register("Clip", check=_check_clip)
def _clip(ctx: Context, node: OnnxNode) -> None:
    lo, hi = _clip_bounds(ctx.graph, node)
    x = ctx.node_input(node)
    cap = max(hi, -lo) if lo < 0 else hi
    cap = None if math.isinf(cap) else cap
    x = ctx.int8(x, positive=lo >= 0, cap=cap, per_channel=lo == 0 and _per_channel_output(ctx, node))
    builder = ctx.builder
    out = ctx.fresh(node.outputs[0])
    scale = builder.scales[x.name]
    if lo == 0 and 127 * float(np.max(scale)) <= hi * (1 + 1e-9):  # int8 saturation is the cap
        builder.op("relu", [x.name], out, scale)
    else:  # clip in int8 units of the same scale, as a table
        x = ctx.int8(x)
        scale = builder.scales[x.name]
        q = np.arange(256) - 128
        low = -128 if math.isinf(lo) else _round_half_up(lo / scale)
        high = 127 if math.isinf(hi) else _round_half_up(hi / scale)
        values = np.clip(q, max(low, -128), min(high, 127)).astype(np.int8)
        builder.param(f"{out}.table", values)
        builder.op("table", [x.name, f"{out}.table"], out, scale)
    ctx.bind(node.outputs[0], Val(out, x.channels_last))


# --------------------------------------------------------------------------- pools


def _check_pool(graph, node):
    kernel = tuple(node.attrs.get("kernel_shape", ()))
    reason = _window_check(graph, node, kernel)
    if reason:
        return reason
    if node.attrs.get("storage_order", 0):
        return "storage_order=1 is not supported"
    if len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output is not supported"
    if (
        node.op_type == "AveragePool"
        and node.attrs.get("count_include_pad", 0)
        and any(p for pair in _pads(node) for p in pair)
    ):
        return "count_include_pad=1 with padding is not supported (padding is not counted)"
    return None


def _pool(ctx: Context, node: OnnxNode, op: str, window, strides, padding) -> None:
    x = ctx.node_input(node)
    x = ctx.nhwc(ctx.int8(x, per_channel=ctx.dtype(x) == "int8" or _per_channel_output(ctx, node)))
    output = node.outputs[0]
    out = ctx.fresh(output)
    ctx.builder.op(
        op, [x.name], out, ctx.builder.scales[x.name], window=window, strides=strides, padding=padding
    )
    ctx.bind(output, Val(out, True))


@register("MaxPool", check=_check_pool)
@register("AveragePool", check=_check_pool)
def _window_pool(ctx: Context, node: OnnxNode) -> None:
    op = "max_pool" if node.op_type == "MaxPool" else "avg_pool"
    window = tuple(int(k) for k in node.attrs["kernel_shape"])
    _pool(ctx, node, op, window, _strides(node), _pads(node))


def _check_global_pool(graph, node):
    shape = _shape(graph, node.inputs[0])
    if shape is not None and len(shape) != 4:
        return f"only (batch, C, H, W) inputs are supported, got {shape}"
    return None


def _global_mean(ctx: Context, node: OnnxNode, keepdims: bool) -> None:
    """The mean over H and W, exactly: ``(batch, HW, C)`` transposed, times a column of ones.

    The window sum is an int32 at the input's scale divided by ``H * W``: nothing is rounded
    (an int8 ``avg_pool`` would round each mean to the input's step, which the later layers'
    calibration, over a smaller range, would magnify). The input is int8 with one scale per
    channel (the int32 sum keeps them; a reader requantizes it as it needs)."""
    x = ctx.nhwc(ctx.int8(ctx.node_input(node), per_channel=True))
    builder = ctx.builder
    _, h, w, c = builder.values[x.name].shape
    scale = np.asarray(builder.scales[x.name], np.float64)
    column = scale.reshape(-1, 1) if scale.ndim else float(scale)  # the channels on axis -2
    name = ctx.fresh(node.outputs[0])
    rows = builder.op("reshape", [x.name], f"{name}.rows", builder.scales[x.name], shape=(h * w, c))
    moved = builder.op("transpose", [rows], f"{name}.channels", column, perm=(1, 0))
    ones = builder.param(f"{name}.ones", np.ones((h * w, 1), np.int8))
    total = builder.op("matmul", [moved, ones], f"{name}.sum", column / (h * w))
    row = (1, 1, c) if keepdims else (c,)
    builder.op("reshape", [total], name, scale / (h * w) if scale.ndim else float(scale) / (h * w), shape=row)
    ctx.bind(node.outputs[0], Val(name, keepdims))


@register("GlobalAveragePool", check=_check_global_pool)
def _global_average_pool(ctx: Context, node: OnnxNode) -> None:
    _global_mean(ctx, node, keepdims=True)


def _reduce_axes(graph: OnnxGraph, node: OnnxNode) -> list[int] | None:
    if graph.opset >= 18:
        if len(node.inputs) > 1 and node.inputs[1]:
            axes = graph.const(node.inputs[1])
            return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        return []
    return [int(a) for a in node.attrs.get("axes", [])]


def _check_reduce_mean(graph, node):
    shape = _shape(graph, node.inputs[0])
    axes = _reduce_axes(graph, node)
    if axes is None:
        return "its axes (input 1) must be a constant"
    if shape is None or len(shape) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
        return f"only the mean over the spatial axes (2, 3) of a 4-D tensor is supported, got axes {axes} of {shape}"
    return None


@register("ReduceMean", opsets=(13, 17), check=_check_reduce_mean)  # axes: an attribute
@register("ReduceMean", opsets=(18, 20), check=_check_reduce_mean)  # axes: input 1
def _reduce_mean(ctx: Context, node: OnnxNode) -> None:
    _global_mean(ctx, node, keepdims=bool(node.attrs.get("keepdims", 1)))


# --------------------------------------------------------------------------- shapes


def _check_flatten(graph, node):
    shape = _shape(graph, node.inputs[0])
    if node.attrs.get("axis", 1) != 1 and not (shape is not None and node.attrs["axis"] % len(shape) == 1):
        return f"axis={node.attrs.get('axis')} is not supported (only 1: keep the batch axis)"
    return None


@register("Flatten", check=_check_flatten)
def _flatten(ctx: Context, node: OnnxNode) -> None:
    x = ctx.node_input(node)
    if len(ctx.shape(x)) == 1:
        ctx.bind(node.outputs[0], x)
        return
    x = ctx.onnx_order(ctx.int8(x))
    out = ctx.fresh(node.outputs[0])
    ctx.builder.op("flatten", [x.name], out, ctx.builder.scales[x.name])
    ctx.bind(node.outputs[0], Val(out, False))


def _reshape_target(graph: OnnxGraph, node: OnnxNode, row: tuple[int, ...]) -> tuple[int, ...] | str:
    """The row shape a ``Reshape`` asks for, or why it is not supported."""
    target = [int(v) for v in np.asarray(graph.const(node.inputs[1])).reshape(-1)]
    if not target:
        return "a reshape to a scalar drops the batch axis"
    if node.attrs.get("allowzero", 0) and 0 in target:
        return "allowzero=1 with a 0 in the shape is not supported"
    first, rest = target[0], target[1:]
    if first not in (BATCH, 0, -1) and first not in graph.exported_batches:
        return f"the first entry of the target shape {target} must be the batch axis"
    rest = [row[i - 1] if d == 0 and i - 1 < len(row) else d for i, d in enumerate(rest, start=1)]
    if any(d == BATCH for d in rest):
        return f"the target shape {target} moves the batch axis"
    size = math.prod(row)
    known = math.prod(d for d in rest if d != -1)
    if rest.count(-1) > 1 or (first == -1 and -1 in rest):
        return f"the target shape {target} has more than one -1"
    if -1 in rest:
        if known == 0 or size % known:
            return f"cannot reshape a row of shape {row} to {target}"
        rest = [size // known if d == -1 else d for d in rest]
    elif known != size:
        return f"cannot reshape a row of shape {row} to {target} without moving the batch axis"
    return tuple(rest)


def _check_reshape(graph, node):
    reason = _need_const(graph, node, 1, "shape")
    if reason:
        return reason
    shape = _shape(graph, node.inputs[0])
    if shape is None:
        return None
    found = _reshape_target(graph, node, shape[1:])
    return found if isinstance(found, str) else None


@register("Reshape", check=_check_reshape)
def _reshape(ctx: Context, node: OnnxNode) -> None:
    x = ctx.node_input(node)
    row = ctx.shape(x)
    target = _reshape_target(ctx.graph, node, row)
    if isinstance(target, str):
        raise ProgramError(f"Reshape {node.name!r}: {target}")
    if target == row:
        ctx.bind(node.outputs[0], x)
        return
    x = ctx.onnx_order(ctx.int8(x))
    out = ctx.fresh(node.outputs[0])
    ctx.builder.op("reshape", [x.name], out, ctx.builder.scales[x.name], shape=tuple(target))
    ctx.bind(node.outputs[0], Val(out, False))
