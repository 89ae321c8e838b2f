"""Export an AIVM program to an ONNX graph that EZKL evaluates exactly at scale 0.

At ``input_scale = param_scale = 0`` EZKL represents integers exactly, so the
export only has to (1) keep every constant exactly representable in float32
(ONNX's tensor type) and (2) express each op with ONNX ops whose EZKL
semantics are exact integer semantics. The tricks, op by op:

* ``requantize``: per-channel shifts become one common shift ``S = max(s)``
  with the multiplier scaled by ``2**(S - s)`` (the same quotient:
  ``floor(a / 2**s) == floor(a * 2**k / 2**(s + k))``). A bias read only by
  the requantize joins its rounding offset, ``(x + b) M + 2^(S-1) == x M +
  (b M + 2^(S-1))``, and so does the constant that makes the dividend
  positive. Constants of ``2**24`` or more are split into parts exact in
  float32 (`_f32_parts`). Then one floor division by ``2**S`` (`_floor_div`),
  whose digits EZKL range-checks in base ``2**14``, the one table its
  decompositions use, so no op needs EZKL's boolean gadgets and their {0, 1}
  table (each extra table costs about 65k gas to verify). A ``Div`` alone is
  not an integer division in EZKL (it changes the fixed-point scale; the
  rescale back to integers checks only ``|x - q d| < d``), which is why the
  step corrects ``q`` by its remainder. An int8 result is clipped to
  [-128, 127], or to [0, 127] with the relu that followed it fused in
  (`_rewrite`); a clip is two relus (`_clip`).
* ``conv2d``: ``Conv`` in NCHW, transposed in and out (layout costs no rows).
  (An im2col ``MatMul`` lets EZKL check the product with Freivalds' trick in
  about 15x fewer rows, but its extra challenge columns made the digits CNN's
  proof slower and its verification dearer, so convolutions stay ``Conv``.)
* ``max_pool``: a tree of ``max(a, b) = a + relu(b - a)`` over the window's
  taps (`_max_pool`), moved before the requantize that fed it where that is
  exact (`_rewrite`).
* ``avg_pool``: the window sum (a reshape and ``ReduceSum`` where windows tile
  the image, else a 0/1 convolution), then ``floor((2S + n) / 2n)``.
* ``table``: ``Gather(values, x + 128)``.

Programs whose values could wrap int32 (by `program_bounds`) are refused:
a circuit computes exact integers, and they would differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aivm_jax._errors import UnsupportedForProofError
from aivm_jax.program import Node, Program
from aivm_jax.proofs._bounds import program_bounds
from aivm_jax.proofs._rewrite import circuit_nodes

__all__ = ["CIRCUIT_VERSION", "ExportedCircuit", "export_onnx"]

DIV_BITS = 14  # = EZKL's default decomp_base 2**14, so a division's digits share its range table

CIRCUIT_VERSION = 3
"""Which export this module writes; it goes up whenever the circuit of an unchanged program
changes (2: one 2^14 range table, floors and clips from relus, exact
rewrites, folded biases; 3: one rounding per requantize whatever its shift, rescales
triggered by ``Neg``, max pools as relu trees, one advice column per role and one column
set, selectors not merged at setup). Keys record it, and `setup` makes new keys when the
cached ones were made from another version."""


@dataclasses.dataclass(frozen=True)
class ExportedCircuit:
    """The ONNX model bytes and the integer bounds that size the circuit.

    Attributes:
      onnx_bytes: serialized ONNX model (batch 1, float32 tensors holding integers).
      divisions: ``(divisor, bound on |dividend|)`` of every ``Div``.
      max_value: largest ``|value|`` of any program value.
      table_index_range: whether any ``Gather`` lookups are used.
    """

    onnx_bytes: bytes
    divisions: tuple[tuple[int, int], ...]
    max_value: int
    uses_tables: bool


class _Graph:
    def __init__(self) -> None:
        import onnx.helper  # noqa: F401  (fail early with ImportError if the extra is missing)

        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.divisions: list[tuple[int, int]] = []  # (divisor, bound on |dividend|) of every Div
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        array = np.asarray(value)
        if dtype is np.float32:
            exact = array.astype(np.float64)  # every int below 2**53 is exact in float64
            if not np.array_equal(exact.astype(np.float32).astype(np.float64), exact):
                raise UnsupportedForProofError(f"constant {hint} is not exact in float32")
            array = array.astype(np.float32)
        else:
            array = array.astype(dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _f32_parts(values) -> list[np.ndarray]:
    """Nonzero int64 arrays, each exact in float32, that sum to ``values`` (``|v| < 2**47``).

    Below ``2**24`` a value is its own part; above, it splits into its low 24
    bits, ``v mod 2**24``, and the rest, a multiple of ``2**24`` with at most
    23 significant bits: two ``Add`` rows per element, not three.
    """
    v = np.asarray(values, dtype=np.int64)
    if np.abs(v).max(initial=0) < 2**24:
        return [v] if v.any() else []
    if np.abs(v).max() >= 2**47:
        raise UnsupportedForProofError("a constant of 2^47 or more has no exact float32 parts")
    low = v & (2**24 - 1)
    return [part for part in (v - low, low) if part.any()]


def _clip(g: _Graph, x: str, low: int, high: int) -> str:
    """``clip(x, low, high)`` as ``high - relu(high - (low + relu(x - low)))``.

    The same integers as ``Clip``, in about 25% fewer circuit rows for [0, 127]
    and 35% fewer for [-128, 127]: EZKL lays ``Clip`` out as a sort with
    boolean gadgets, a relu as one sign decomposition.
    """
    return _clip_from(g, g.op("Sub", [x, g.const(np.float32(low), "low")]), low, high)


def _clip_negated(g: _Graph, minus_x: str, k: int, low: int, high: int) -> str:
    """``clip(-minus_x - k, low, high)``, for a `_floor_div` result: its constant joins the clip's."""
    return _clip_from(g, g.op("Sub", [g.const(np.float32(-k - low), "low"), minus_x]), low, high)


def _clip_from(g: _Graph, above: str, low: int, high: int) -> str:
    """``clip(v, low, high)`` given ``above = v - low``; a zero ``low`` needs no addition."""
    at_least_low = g.op("Relu", [above])
    if low:
        at_least_low = g.op("Add", [at_least_low, g.const(np.float32(low), "low")])
    high_const = g.const(np.float32(high), "high")
    return g.op("Sub", [high_const, g.op("Relu", [g.op("Sub", [high_const, at_least_low])])])


def _floor_div(g: _Graph, x: str, divisor: int, bound: int, offset=0, times: int = 1) -> tuple[str, int]:
    """``-floor((times x + offset) / d) - k``, for ``|times x + offset| <= bound``, as ``(out, k)``.

    The result comes negated and shifted by ``k``: the caller folds both into
    its next constant (``c - out``), at no extra op. ``offset`` (a constant,
    per channel or scalar) is added together with the constant below, so one
    ``Add`` per float32 part serves both. A divisor under ``2**DIV_BITS`` is
    first scaled up to it together with the numerator (``floor(a m / (d m))
    == floor(a / d)``). Then, with ``k d > bound`` so that ``y = x + offset + k
    d`` is positive:

    * ``Div(y, d)`` only moves the fixed-point scale, and the ``Neg`` after it
      makes EZKL rescale back to integers (the cheapest op that does: 57 rows
      per element with one advice column, a ``Relu`` 75). That rescale proves
      ``|y - q d| < d`` (``q`` and the distance decomposed in base-2^14
      digits): ``q`` is ``floor(y / d)`` or, when ``d`` does not divide ``y``,
      possibly ``floor(y / d) + 1``, at the prover's choice.
    * ``r = y - q d`` is in ``[0, d)`` for the first and negative for the
      second, so ``q - (r < 0)`` is ``floor(y / d)`` either way, and
      ``floor(y / d) - k == floor((x + offset) / d)``.

    A power of two of any size up to the decomposition's reach is one such
    step (`_circuit` sizes ``decomp_legs`` for every ``(d, y)`` recorded here),
    so a requantize shift of 20-25 bits is one rounding, not two.

    ``Less`` is a sign decomposition; EZKL's ``Floor`` would need its boolean
    gadgets and their own {0, 1} range table, which costs about 65k gas per
    verification and about 1.15x proving time on digits-mlp.
    """
    scale = 2 ** max(0, DIV_BITS - (divisor - 1).bit_length())
    if times * scale != 1:
        x = g.op("Mul", [x, g.const(np.float32(times * scale), "scale")])
    d, dividend_bound = divisor * scale, bound * scale
    k = dividend_bound // d + 1
    for part in _f32_parts(np.asarray(offset, dtype=np.int64) * scale + np.int64(k * d)):
        x = g.op("Add", [x, g.const(part, "positive")])
    g.divisions.append((d, dividend_bound + k * d))
    d_const = g.const(np.float32(d), "divisor")
    minus_q = g.op("Neg", [g.op("Div", [x, d_const])])
    remainder = g.op("Add", [x, g.op("Mul", [minus_q, d_const])])
    negative = g.op("Cast", [g.op("Less", [remainder, g.const(np.float32(0), "zero")])], to=1)
    return g.op("Add", [minus_q, negative]), k


def _negate(g: _Graph, minus_x: str, k: int) -> str:
    """``-minus_x - k``: a `_floor_div` result as the quotient itself."""
    return g.op("Sub", [g.const(np.float32(-k), "minus_k"), minus_x])


def _window_taps(g: _Graph, x: str, shape: tuple[int, ...], attrs) -> tuple[list[str], tuple[int, ...]]:
    """One flat ``(1, Ho Wo C)`` tensor per window position of an unpadded NHWC pooling,
    each a ``Gather`` at constant indices (no constraints in EZKL); and ``(Ho, Wo, C)``."""
    (height, width, channels), (wh, ww), (sh, sw) = shape, attrs["window"], attrs["strides"]
    out_h, out_w = (height - wh) // sh + 1, (width - ww) // sw + 1
    flat = g.op("Reshape", [x, g.const(np.array([1, height * width * channels]), "flat", dtype=np.int64)])
    base = (np.arange(out_h)[:, None, None] * sh * width + np.arange(out_w)[None, :, None] * sw) * channels
    base = base + np.arange(channels)
    taps = [
        g.op(
            "Gather",
            [flat, g.const((base + (i * width + j) * channels).reshape(-1), "tap", dtype=np.int64)],
            axis=1,
        )
        for i in range(wh)
        for j in range(ww)
    ]
    return taps, (out_h, out_w, channels)


def _max_pool(g: _Graph, x: str, shape: tuple[int, ...], attrs) -> str:
    """An unpadded NHWC max pool as a tree of ``max(a, b) = a + relu(b - a)``.

    Exact for integers, and one sign decomposition per comparison: 63 rows
    per output of a 2x2 window, where EZKL's ``MaxPool`` takes 86.
    """
    level, out_shape = _window_taps(g, x, shape, attrs)
    while len(level) > 1:
        pairs = [
            g.op("Add", [a, g.op("Relu", [g.op("Sub", [b, a])])]) for a, b in zip(level[::2], level[1::2])
        ]
        level = pairs + level[len(pairs) * 2 :]
    return g.op("Reshape", [level[0], g.const(np.array([1, *out_shape]), "nhwc", dtype=np.int64)])


def _window_sum(g: _Graph, x: str, shape: tuple[int, ...], attrs) -> str:
    """Sum over each unpadded pooling window of an NHWC value (batch 1).

    Windows that tile the image (window == strides, sizes divisible) are a
    reshape and a ``ReduceSum``, a few rows per element; other windows are a
    0/1 convolution, one multiplication per window element and channel pair.
    """
    if attrs["padding"] != ((0, 0), (0, 0)):
        raise UnsupportedForProofError("avg_pool with padding is not exported yet")
    (height, width, channels), (wh, ww) = shape, attrs["window"]
    if tuple(attrs["strides"]) == (wh, ww) and height % wh == 0 and width % ww == 0:
        tiles = g.const(np.array([1, height // wh, wh, width // ww, ww, channels]), "tiles", dtype=np.int64)
        axes = g.const(np.array([2, 4]), "window_axes", dtype=np.int64)
        return g.op("ReduceSum", [g.op("Reshape", [x, tiles]), axes], keepdims=0)
    ones = np.zeros((channels, channels, wh, ww), np.float32)
    ones[np.arange(channels), np.arange(channels)] = 1.0
    nchw = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    total = g.op(
        "Conv",
        [nchw, g.const(ones, "sum_kernel")],
        kernel_shape=[wh, ww],
        strides=list(attrs["strides"]),
        pads=[0, 0, 0, 0],
        dilations=[1, 1],
    )
    return g.op("Transpose", [total], perm=[0, 2, 3, 1])


EXPORTABLE_OPS = frozenset(
    {
        "matmul",
        "conv2d",
        "bias_add",
        "requantize",
        "relu",
        "table",
        "max_pool",
        "avg_pool",
        "reshape",
        "flatten",
        "transpose",
        "concat",
    }
)
"""Ops with an exact ONNX translation; the transformer ops are not among them yet."""


def export_onnx(program: Program) -> ExportedCircuit:
    """Translate ``program`` (batch 1) into ONNX; raise `UnsupportedForProofError` if not exact."""
    from onnx import TensorProto, helper

    if len(program.inputs) != 1 or len(program.outputs) != 1:
        raise UnsupportedForProofError("proofs support programs with one input and one output")
    missing = sorted({node.op for node in program.nodes} - EXPORTABLE_OPS)
    if missing:
        raise UnsupportedForProofError(f"no exact circuit yet for the op(s) {', '.join(missing)}")
    nodes = circuit_nodes(program)
    bounds = program_bounds(program, nodes)
    for name, bound in bounds.items():
        if bound >= 2**31:
            raise UnsupportedForProofError(
                f"value {name!r} may reach {bound} and wrap int32; a circuit computes exactly, so the "
                "proof could not match the runtime"
            )
    g = _Graph()
    values = {program.inputs[0].name: program.inputs[0].name}
    readers: dict[str, list[Node]] = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    folded_biases = {  # bias_add output -> its bias, for each bias_add read only by one requantize
        node.output: program.params[node.inputs[1]]
        for node in nodes
        if node.op == "bias_add"
        and [r.op for r in readers.get(node.output, [])] == ["requantize"]
        and node.output not in {spec.name for spec in program.outputs}
    }
    uses_tables = False
    P = program.params
    for node in nodes:
        x = values[node.inputs[0]]
        bound = bounds[node.inputs[0]]
        a = node.attrs
        if node.op == "matmul":
            out = g.op("MatMul", [x, g.const(P[node.inputs[1]], "weight")])
        elif node.op == "conv2d":
            w = np.transpose(P[node.inputs[1]], (3, 2, 0, 1))  # HWIO -> OIHW
            (top, bottom), (left, right) = a["padding"]
            nchw = g.op("Transpose", [x], perm=[0, 3, 1, 2])
            conv = g.op(
                "Conv",
                [nchw, g.const(w, "weight")],
                kernel_shape=list(w.shape[2:]),
                strides=list(a["strides"]),
                pads=[top, left, bottom, right],
                dilations=[1, 1],
            )
            out = g.op("Transpose", [conv], perm=[0, 2, 3, 1])
        elif node.op == "bias_add":
            out = x  # a folded bias is added inside the requantize that reads it
            if node.output not in folded_biases:
                for part in _f32_parts(P[node.inputs[1]]):
                    out = g.op("Add", [out, g.const(part, "bias")])
        elif node.op == "requantize":
            m = P[node.inputs[1]].astype(np.int64)
            s = P[node.inputs[2]].astype(np.int64)
            common = int(s.max())
            m_scaled = m << (common - s)  # exact: the same quotient at the common shift
            if np.abs(m_scaled).max(initial=0) >= 2**46:
                raise UnsupportedForProofError(f"{node.output}: per-channel shifts differ too much")
            terms = [g.op("Mul", [x, g.const(part, "mult")]) for part in _f32_parts(m_scaled)]
            out = terms[0] if terms else g.op("Mul", [x, g.const(np.float32(0), "zero")])
            for term in terms[1:]:
                out = g.op("Add", [out, term])
            # (x + b) * M + 2^(S-1) == x * M + (b * M + 2^(S-1)): one offset for the bias and the rounding
            offset = np.int64(2 ** (common - 1)) if common > 0 else np.int64(0)
            if node.inputs[0] in folded_biases:
                offset = offset + folded_biases[node.inputs[0]].astype(np.int64) * m_scaled
            low = 0 if a.get("fused_relu") else -128  # relu(clip(q, -128, 127)) == clip(q, 0, 127)
            if common > 0:
                dividend = bound * int(np.abs(m_scaled).max()) + 2 ** (common - 1)
                if dividend >= 2**53:
                    raise UnsupportedForProofError(
                        f"{node.output}: |x * M| may reach 2^53; use smaller multipliers"
                    )
                minus_q, k = _floor_div(g, out, 2**common, dividend, offset)
                if a["out_dtype"] == "int8":
                    out = _clip_negated(g, minus_q, k, low, 127)
                else:
                    out = _negate(g, minus_q, k)
            else:
                for part in _f32_parts(offset):
                    out = g.op("Add", [out, g.const(part, "offset")])
                if a["out_dtype"] == "int8":
                    out = _clip(g, out, low, 127)
            if a["out_dtype"] != "int8" and bounds[node.output] >= 2**31 - 1:
                raise UnsupportedForProofError(f"{node.output}: int32 saturation is not exported")
        elif node.op == "relu":
            out = g.op("Relu", [x])
        elif node.op == "table":
            uses_tables = True
            table = P[node.inputs[1]]
            index = g.op("Add", [x, g.const(np.float32(128), "offset")])
            out = g.op("Gather", [g.const(table, "table"), index], axis=0)
        elif node.op == "max_pool":
            if a["padding"] != ((0, 0), (0, 0)):
                raise UnsupportedForProofError(f"{node.op} with padding is not exported yet")
            out = _max_pool(g, x, program.value_shape(node.inputs[0]), a)
        elif node.op == "avg_pool":
            n = a["window"][0] * a["window"][1]
            total = _window_sum(g, x, program.value_shape(node.inputs[0]), a)
            # floor((2 S + n) / 2n): the doubling and the offset join the division's own constants
            minus_q, k = _floor_div(g, total, 2 * n, 2 * bound * n + n, offset=n, times=2)
            out = _negate(g, minus_q, k)
        elif node.op in ("reshape", "flatten"):
            shape = (
                a["shape"] if node.op == "reshape" else (int(np.prod(program.value_shape(node.inputs[0]))),)
            )
            out = g.op("Reshape", [x, g.const(np.array([1, *shape]), "shape", dtype=np.int64)])
        elif node.op == "transpose":
            out = g.op("Transpose", [x], perm=[0, *[p + 1 for p in a["perm"]]])
        elif node.op == "concat":
            out = g.op("Concat", [values[name] for name in node.inputs], axis=a["axis"])
        else:
            raise UnsupportedForProofError(f"op {node.op!r} has no exact circuit export yet")
        values[node.output] = out
    spec_in, spec_out = program.inputs[0], program.outputs[0]
    graph = helper.make_graph(
        g.nodes,
        program.name,
        [helper.make_tensor_value_info(spec_in.name, TensorProto.FLOAT, [1, *spec_in.shape])],
        [helper.make_tensor_value_info(values[spec_out.name], TensorProto.FLOAT, [1, *spec_out.shape])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="aivm_jax")
    return ExportedCircuit(
        onnx_bytes=model.SerializeToString(),
        divisions=tuple(g.divisions),
        max_value=max(bounds.values()),
        uses_tables=uses_tables,
    )
