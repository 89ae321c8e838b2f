"""The opset registry: which ops exist in version 1, their operand kinds, and their checks.

An op's operands are either *activations* (values computed by the program,
with a leading batch axis) or *parameters* (tensors stored in the program,
without one). Keeping the second operand of every weighted op a parameter is
what guarantees that no op mixes the rows of a batch.

`check_node` validates dtypes, ranks, attributes and parameter values before
anything runs, and returns the output type; both implementations then assume
valid operands.

**No op reaches the batch axis**, and this is checked by rank, never by the
batch-1 shapes validation sees (at batch 1 a row of shape ``()`` has the full
shape ``(1,)``, whose last axis *is* the batch axis). Per op, the axes it
reduces over or indexes along, and the rank that keeps them off axis 0:

* ``layer_norm``, ``iota``: the last axis; rank >= 2.
* ``bias_add``; ``requantize``/``add`` with per-channel ``(N,)`` parameters:
  the last axis (indexes the parameter); rank >= 2. Per-tensor ``()``
  parameters apply to any rank.
* ``matmul``: contracts the last axis; rank >= 2. ``batch_matmul``: the last
  two; rank >= 3, leading axes (batch included) equal and kept.
* ``softmax``: the last axis, queries the one before; rank >= 3; its mask is
  ``(batch, T)``. ``mean_pool``: axis 1 of ``(batch, T, D)``.
* ``conv2d``, ``max_pool``, ``avg_pool``: axes 1, 2 of ``(batch, H, W, C)``.
* ``argmax``, ``concat``: the ``axis`` attribute, refused when it names axis 0.
* ``reshape``, ``flatten``, ``transpose``: rearrange the non-batch axes only
  (the batch axis is kept by construction).
* ``relu``, ``table``, ``gather``: elementwise over the activation (``gather``
  indexes the parameter table).

Every tensor also meets the bounds of `aivm_jax.ops._limits` (rank, elements,
non-empty axes), and `node_cost` gives each node's work and compile units for
the program-level bounds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from aivm_jax._errors import OpError
from aivm_jax.ops import _limits, lowering, reference

__all__ = [
    "OPSET",
    "OPSET_VERSION",
    "NodeCost",
    "OpDef",
    "TensorType",
    "check_node",
    "check_tensor",
    "node_cost",
]

OPSET_VERSION = 1
"""Bumped whenever the meaning of any op changes; it is part of every model id."""

INT_DTYPES = ("int8", "int32")


@dataclasses.dataclass(frozen=True)
class TensorType:
    """dtype name and full shape (the batch axis included for activations)."""

    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpDef:
    """One op of the opset.

    Attributes:
      name: the op's name in programs.
      operands: ``"act"`` or ``"param"`` per operand; ``("act", "...")`` means
        one or more activations.
      attrs: attribute name -> normalizer (raises `OpError`, returns a
        canonical JSON-able value). Attributes not listed are refused.
      check: dtype/rank checks on the operand types and normalized attrs.
      check_params: value checks on the parameter operands (optional).
      lowering / reference: the JAX and NumPy implementations.
      work: per-row work of one application, from the operand types, attributes
        and output type (`node_cost`); default: the output row's elements.
      scratch: bytes of temporaries per element of the larger of the first
        operand's and the output's rows (int64 intermediates, say).
      compile_units: the op's share of a program's compile time, in units of
        one elementwise op (about 10 ms on XLA's path on a 2-core x86 machine):
        ``layer_norm`` 64 (its int64 steps and 26-step bitwise square root),
        ``softmax`` 16, the products, rescales and pools 2, others 1.
    """

    name: str
    operands: tuple[str, ...]
    attrs: Mapping[str, Callable[[Any], Any]]
    check: Callable[[Sequence[TensorType], Mapping[str, Any]], None]
    lowering: Callable[..., Any]
    reference: Callable[..., Any]
    check_params: Callable[[Sequence[np.ndarray]], None] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    work: Callable[[Sequence[TensorType], Mapping[str, Any], TensorType], int] | None = None
    scratch: int = 0
    compile_units: int = 1

    @property
    def variadic(self) -> bool:
        return self.operands[-1] == "..."


# --------------------------------------------------------------------------- attrs


def _ints(n: int, minimum: int, what: str) -> Callable[[Any], tuple[int, ...]]:
    top = _limits.MAX_ATTR_INT

    def normalize(value: Any) -> tuple[int, ...]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= top for v in value)
        ):
            raise OpError(f"{what} must be {n} integers in [{minimum}, {top}], got {value!r}")
        return tuple(value)

    return normalize


def _padding(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    pair = _ints(2, 0, "each padding pair")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OpError(f"padding must be ((top, bottom), (left, right)), got {value!r}")
    return (pair(value[0]), pair(value[1]))  # type: ignore[return-value]


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise OpError(f"expected an integer attribute, got {value!r}")
    return value


def _out_dtype(value: Any) -> str:
    if value not in INT_DTYPES:
        raise OpError(f"out_dtype must be one of {INT_DTYPES}, got {value!r}")
    return str(value)


def _shape(value: Any) -> tuple[int, ...]:
    top = _limits.MAX_ATTR_INT
    if (
        not isinstance(value, (list, tuple))
        or len(value) >= _limits.MAX_RANK
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and (1 <= v <= top or v == -1) for v in value
        )
        or list(value).count(-1) > 1
    ):
        raise OpError(
            f"shape must be at most {_limits.MAX_RANK - 1} integers in [1, {top}] with at most one -1, "
            f"got {value!r}"
        )
    return tuple(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise OpError(f"expected true or false, got {value!r}")
    return value


def _int_in(low: int, high: int, what: str) -> Callable[[Any], int]:
    def normalize(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise OpError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
        return value

    return normalize


def _perm(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or sorted(value) != list(range(len(value)))
    ):
        raise OpError(f"perm must be a permutation of 0..n-1, got {value!r}")
    return tuple(int(v) for v in value)


# --------------------------------------------------------------------------- checks


def _need(t: TensorType, dtypes: Sequence[str], rank: int | None, what: str) -> None:
    if t.dtype not in dtypes:
        raise OpError(f"{what} must have dtype {' or '.join(dtypes)}, got {t.dtype}")
    if rank is not None and len(t.shape) != rank:
        raise OpError(f"{what} must have rank {rank}, got shape {t.shape}")


def _need_row_axis(t: TensorType, what: str) -> None:
    """Refuse an activation whose last axis is its batch axis (rank 1: a row of shape ``()``)."""
    if len(t.shape) < 2:
        raise OpError(
            f"{what} must have an axis besides the batch axis (rank >= 2), got rank {len(t.shape)} "
            f"(shape {t.shape}); on a row of shape () the op would reach across the batch. "
            "Reshape the row to (1,) first"
        )


def _check_matmul(ts, attrs):
    x, w = ts
    _need(x, ["int8"], None, "matmul input")
    _need(w, ["int8"], 2, "matmul weight")
    _need_row_axis(x, "matmul input")
    if x.shape[-1] != w.shape[0]:
        raise OpError(f"matmul: input {x.shape} does not contract with weight {w.shape}")


def _check_conv2d(ts, attrs):
    x, w = ts
    _need(x, ["int8"], 4, "conv2d input (batch, H, W, C)")
    _need(w, ["int8"], 4, "conv2d weight (KH, KW, C, O)")
    if x.shape[3] != w.shape[2]:
        raise OpError(f"conv2d: input has {x.shape[3]} channels, weight expects {w.shape[2]}")
    _check_window(x, w.shape[:2], attrs["padding"], "conv2d")


def _check_window(x, window, padding, name):
    """Each window fits its padded axis, and each pad is smaller than the window along its axis:
    a pool's every window then holds an in-bounds element, and a conv2d pads at most as a "full"
    convolution does (more would only add outputs that see zeros alone)."""
    for axis, (size, k, (lo, hi)) in enumerate(zip(x.shape[1:3], window, padding)):
        if size + lo + hi < k:
            raise OpError(f"{name}: window {k} larger than padded axis {axis + 1} ({size + lo + hi})")
        if lo >= k or hi >= k:
            raise OpError(
                f"{name}: padding {(lo, hi)} along axis {axis + 1} must be smaller than the window {k}"
            )


def _check_bias_add(ts, attrs):
    x, b = ts
    _need(x, ["int32"], None, "bias_add input")
    _need(b, ["int32"], 1, "bias")
    _need_row_axis(x, "bias_add input")
    if x.shape[-1] != b.shape[0]:
        raise OpError(f"bias_add: input {x.shape} and bias {b.shape} disagree on the last axis")


def _check_requantize(ts, attrs):
    x, m, s = ts
    _need(x, ["int32"], None, "requantize input")
    _need(m, ["int32"], None, "requantize multiplier")
    _need(s, ["int32"], None, "requantize shift")
    if m.shape != s.shape or m.shape not in ((), (x.shape[-1],)):
        raise OpError(
            f"requantize: multiplier {m.shape} and shift {s.shape} must both be () or "
            f"({x.shape[-1]},) for input {x.shape}"
        )
    if m.shape != ():
        _need_row_axis(x, "requantize input with per-channel multiplier and shift")


def _check_shift_values(params):
    shift = params[1]
    if shift.size and (shift.min() < 0 or shift.max() > 62):
        raise OpError(f"requantize shift must lie in [0, 62], got [{shift.min()}, {shift.max()}]")


def _check_relu(ts, attrs):
    _need(ts[0], INT_DTYPES, None, "relu input")


def _check_table(ts, attrs):
    x, values = ts
    _need(x, ["int8"], None, "table input")
    _need(values, INT_DTYPES, 1, "table values")
    if values.shape != (256,):
        raise OpError(f"table values must have shape (256,), got {values.shape}")


def _check_pool(name):
    def check(ts, attrs):
        _need(ts[0], ["int8"], 4, f"{name} input (batch, H, W, C)")
        kh, kw = attrs["window"]
        if kh * kw > _limits.MAX_WINDOW_ELEMENTS:
            raise OpError(
                f"{name}: window {kh} x {kw} holds {kh * kw} elements, more than the "
                f"{_limits.MAX_WINDOW_ELEMENTS} a window may hold"
            )
        _check_window(ts[0], attrs["window"], attrs["padding"], name)

    return check


def _check_reshape(ts, attrs):
    size = int(np.prod(ts[0].shape[1:], dtype=np.int64))
    known = int(np.prod([d for d in attrs["shape"] if d != -1], dtype=np.int64))
    fits = size % known == 0 if -1 in attrs["shape"] else known == size
    if not fits:
        raise OpError(f"reshape: cannot reshape {ts[0].shape[1:]} to {attrs['shape']}")


def _check_any(ts, attrs):
    _need(ts[0], INT_DTYPES, None, "input")


def _check_iota(ts, attrs):
    _need(ts[0], INT_DTYPES, None, "iota input")
    _need_row_axis(ts[0], "iota input")


def _check_transpose(ts, attrs):
    if len(attrs["perm"]) != len(ts[0].shape) - 1:
        raise OpError(f"transpose: perm {attrs['perm']} does not match non-batch rank of {ts[0].shape}")


def _batch_axis_guard(name, rank, axis):
    if not -rank <= axis < rank or axis % rank == 0:
        raise OpError(f"{name}: axis {axis} must be a non-batch axis of a rank-{rank} tensor")


def _check_concat(ts, attrs):
    first = ts[0]
    _need(first, INT_DTYPES, None, "concat input")
    rank = len(first.shape)
    _batch_axis_guard("concat", rank, attrs["axis"])
    axis = attrs["axis"] % rank
    for t in ts[1:]:
        if t.dtype != first.dtype or len(t.shape) != rank:
            raise OpError(f"concat: operands {first} and {t} differ in dtype or rank")
        if any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise OpError(f"concat: shapes {first.shape} and {t.shape} differ off axis {axis}")


def _check_argmax(ts, attrs):
    _need(ts[0], INT_DTYPES, None, "argmax input")
    _batch_axis_guard("argmax", len(ts[0].shape), attrs["axis"])


def _check_gather(ts, attrs):
    _need(ts[0], ["int32"], None, "gather ids")
    _need(ts[1], INT_DTYPES, 2, "gather table (V, D)")


def _check_add(ts, attrs):
    x, y, mx, my, s = ts
    _need(x, INT_DTYPES, None, "add input")
    _need(y, INT_DTYPES, None, "add input")
    if x.shape != y.shape:
        raise OpError(f"add: operands {x.shape} and {y.shape} differ in shape")
    for t, what in ((mx, "x multiplier"), (my, "y multiplier"), (s, "shift")):
        _need(t, ["int32"], None, f"add {what}")
        if t.shape not in ((), (x.shape[-1],)):
            raise OpError(f"add: {what} must have shape () or ({x.shape[-1]},), got {t.shape}")
        if t.shape != ():
            _need_row_axis(x, f"add input with a per-channel {what}")


def _check_add_values(params):
    mx, my, shift = params
    for m in (mx, my):
        if m.size and np.abs(m.astype(np.int64)).max() > 2**30:
            raise OpError("add multipliers must lie in [-2**30, 2**30]")
    if shift.size and (shift.min() < 0 or shift.max() > 62):
        raise OpError(f"add shift must lie in [0, 62], got [{shift.min()}, {shift.max()}]")


def _check_layer_norm(ts, attrs):
    x, gamma, beta = ts
    _need(x, ["int32"], None, "layer_norm input")
    _need_row_axis(x, "layer_norm input")
    top = _limits.LAYER_NORM_MAX_AXIS
    if not 1 <= x.shape[-1] <= top:
        raise OpError(f"layer_norm: the normalized axis must have 1..{top} elements, got {x.shape[-1]}")
    for t, what in ((gamma, "gamma"), (beta, "beta")):
        _need(t, ["int32"], 1, f"layer_norm {what}")
        if t.shape != (x.shape[-1],):
            raise OpError(f"layer_norm: {what} must have shape ({x.shape[-1]},), got {t.shape}")


def _check_batch_matmul(ts, attrs):
    a, b = ts
    _need(a, INT_DTYPES, None, "batch_matmul left operand")
    _need(b, INT_DTYPES, len(a.shape), "batch_matmul right operand (same rank as the left)")
    if len(a.shape) < 3 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise OpError(f"batch_matmul: {a.shape} and {b.shape} must be (..., M, K) and (..., K, N)")


def _check_mask(x, mask, name):
    _need(mask, ["int8"], 2, f"{name} mask (batch, T)")
    if mask.shape[0] != x.shape[0]:
        raise OpError(f"{name}: mask batch {mask.shape[0]} differs from input batch {x.shape[0]}")


def _check_softmax(ts, attrs):
    x, mask, table = ts
    _need(x, ["int32"], None, "softmax input")
    if len(x.shape) < 3:
        raise OpError(f"softmax input must be (batch, ..., Tq, Tk), got {x.shape}")
    _check_mask(x, mask, "softmax")
    if mask.shape[1] != x.shape[-1]:
        raise OpError(f"softmax: mask has {mask.shape[1]} keys, scores have {x.shape[-1]}")
    _need(table, ["int32"], 1, "softmax table")
    n = table.shape[0]
    if n < 2 or n > 2**16 or n & (n - 1):
        raise OpError(f"softmax table length must be a power of two in [2, 65536], got {n}")


def _check_softmax_values(params):
    table = params[0]
    if table.min() < 0 or table.max() > 2**30:
        raise OpError("softmax table values must lie in [0, 2**30]")


def _check_mean_pool(ts, attrs):
    x, mask = ts
    _need(x, INT_DTYPES, 3, "mean_pool input (batch, T, D)")
    _check_mask(x, mask, "mean_pool")
    if mask.shape[1] != x.shape[1]:
        raise OpError(f"mean_pool: mask has {mask.shape[1]} positions, input has {x.shape[1]}")


# --------------------------------------------------------------------------- costs


def _row(t: TensorType) -> int:
    """Elements of one row of an activation (its shape without the batch axis)."""
    return math.prod(t.shape[1:])


def _work_contracting(ts, attrs, out):  # matmul, batch_matmul: one multiply-add per output and K
    return _row(out) * ts[0].shape[-1]


def _work_conv2d(ts, attrs, out):
    kh, kw, c, _ = ts[1].shape
    return _row(out) * kh * kw * c


def _work_pool(ts, attrs, out):
    kh, kw = attrs["window"]
    return _row(out) * kh * kw


def _work_input(factor):
    def work(ts, attrs, out):
        return factor * _row(ts[0])

    return work


def _work_layer_norm(ts, attrs, out):
    rows = _row(ts[0]) // ts[0].shape[-1]
    return 6 * _row(ts[0]) + 2 * 26 * rows  # sums, centring, the division; 26 square-root steps per row


_WINDOW_ATTRS = {
    "window": _ints(2, 1, "window"),
    "strides": _ints(2, 1, "strides"),
    "padding": _padding,
}


def _op(name, operands, check, attrs=None, **kw) -> OpDef:
    return OpDef(
        name=name,
        operands=operands,
        attrs=attrs or {},
        check=check,
        lowering=getattr(lowering, name),
        reference=getattr(reference, name),
        **kw,
    )


OPSET: Mapping[str, OpDef] = {
    op.name: op
    for op in [
        _op("matmul", ("act", "param"), _check_matmul, work=_work_contracting, scratch=4, compile_units=2),
        _op(
            "conv2d",
            ("act", "param"),
            _check_conv2d,
            {"strides": _ints(2, 1, "strides"), "padding": _padding},
            work=_work_conv2d,
            scratch=4,
            compile_units=2,
        ),
        _op("bias_add", ("act", "param"), _check_bias_add),
        _op(
            "requantize",
            ("act", "param", "param"),
            _check_requantize,
            {"out_dtype": _out_dtype},
            check_params=_check_shift_values,
            scratch=16,
            compile_units=2,
        ),
        _op("relu", ("act",), _check_relu),
        _op("table", ("act", "param"), _check_table),
        _op(
            "max_pool",
            ("act",),
            _check_pool("max_pool"),
            _WINDOW_ATTRS,
            work=_work_pool,
            compile_units=2,
        ),
        _op(
            "avg_pool",
            ("act",),
            _check_pool("avg_pool"),
            _WINDOW_ATTRS,
            work=_work_pool,
            scratch=8,
            compile_units=2,
        ),
        _op("reshape", ("act",), _check_reshape, {"shape": _shape}),
        _op("flatten", ("act",), _check_any),
        _op("transpose", ("act",), _check_transpose, {"perm": _perm}),
        _op("concat", ("act", "..."), _check_concat, {"axis": _int}),
        _op(
            "argmax",
            ("act",),
            _check_argmax,
            {"axis": _int},
            defaults={"axis": -1},
            work=_work_input(1),
        ),
        _op("gather", ("act", "param"), _check_gather),
        _op("iota", ("act",), _check_iota),
        _op(
            "add",
            ("act", "act", "param", "param", "param"),
            _check_add,
            {"out_dtype": _out_dtype},
            check_params=_check_add_values,
            scratch=24,
            compile_units=2,
        ),
        _op(
            "layer_norm",
            ("act", "param", "param"),
            _check_layer_norm,
            {"eps": _int_in(0, 2**31 - 1, "eps")},
            work=_work_layer_norm,
            scratch=32,
            compile_units=64,
        ),
        _op(
            "batch_matmul",
            ("act", "act"),
            _check_batch_matmul,
            work=_work_contracting,
            scratch=8,
            compile_units=2,
        ),
        _op(
            "softmax",
            ("act", "act", "param"),
            _check_softmax,
            {"causal": _bool, "out_bits": _int_in(1, 30, "out_bits")},
            check_params=_check_softmax_values,
            work=_work_input(6),
            scratch=24,
            compile_units=16,
        ),
        _op("mean_pool", ("act", "act"), _check_mean_pool, work=_work_input(2), scratch=8, compile_units=2),
    ]
}


def normalize_attrs(op: OpDef, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical attributes of ``op``: defaults filled in, unknown names refused."""
    unknown = set(attrs) - set(op.attrs)
    if unknown:
        raise OpError(f"{op.name}: unknown attribute(s) {sorted(unknown)}; known: {sorted(op.attrs)}")
    merged = {**op.defaults, **attrs}
    missing = set(op.attrs) - set(merged)
    if missing:
        raise OpError(f"{op.name}: missing attribute(s) {sorted(missing)}")
    return {k: op.attrs[k](v) for k, v in sorted(merged.items())}


def check_tensor(t: TensorType, kind: str, what: str) -> None:
    """The opset's bounds on any one tensor: rank, non-empty axes, elements.

    ``kind`` is ``"act"`` (``t.shape`` starts with the batch axis, which the
    element bound leaves out) or ``"param"``.

    Raises:
      OpError: more than `MAX_RANK` axes, an empty axis, a rank-0 activation, or
        more than `MAX_TENSOR_ELEMENTS` elements (per row, for an activation).
    """
    if t.dtype not in INT_DTYPES:
        raise OpError(f"{what} must have dtype {' or '.join(INT_DTYPES)}, got {t.dtype}")
    if len(t.shape) > _limits.MAX_RANK or (kind == "act" and not t.shape):
        raise OpError(f"{what} must have 1..{_limits.MAX_RANK} axes, got shape {t.shape}")
    if any(d < 1 for d in t.shape):
        raise OpError(f"{what} has an empty axis: shape {t.shape}; every axis needs at least 1 element")
    elements = math.prod(t.shape[1:] if kind == "act" else t.shape)
    if elements > _limits.MAX_TENSOR_ELEMENTS:
        per = " per row" if kind == "act" else ""
        raise OpError(
            f"{what} has {elements} elements{per} (shape {t.shape}), more than the "
            f"{_limits.MAX_TENSOR_ELEMENTS} a tensor may hold"
        )


def check_node(
    name: str,
    operand_types: Sequence[TensorType],
    operand_kinds: Sequence[str],
    attrs: Mapping[str, Any],
    params: Sequence[np.ndarray] = (),
) -> tuple[TensorType, dict[str, Any]]:
    """Check one op application; return its output type and canonical attributes.

    Besides the op's own checks, every operand and the output meet `check_tensor`.

    Args:
      name: op name.
      operand_types: types of the operands (activations with their batch axis).
      operand_kinds: ``"act"`` or ``"param"`` per operand, as the program has them.
      attrs: the node's attributes as written.
      params: values of the parameter operands, in order, for value checks.

    Raises:
      OpError: unknown op, wrong operand count/kind/dtype/shape or attributes,
        or a tensor over the opset's bounds (`aivm_jax.ops._limits`).
    """
    op = OPSET.get(name)
    if op is None:
        raise OpError(f"unknown op {name!r}; opset {OPSET_VERSION} has {sorted(OPSET)}")
    expected = list(op.operands)
    if op.variadic:
        expected = expected[:-1] + [expected[-2]] * (len(operand_kinds) - len(expected) + 1)
    if list(operand_kinds) != expected or not operand_kinds or len(operand_types) != len(expected):
        raise OpError(f"{name}: operands must be {op.operands}, got {tuple(operand_kinds)}")
    for i, (t, kind) in enumerate(zip(operand_types, operand_kinds)):
        check_tensor(t, kind, f"{name}: operand {i}")
    canonical = normalize_attrs(op, attrs)
    op.check(operand_types, canonical)
    if op.check_params is not None:
        op.check_params(params)
    structs = [jax.ShapeDtypeStruct(t.shape, np.dtype(t.dtype)) for t in operand_types]
    try:
        out = jax.eval_shape(lambda *xs: op.lowering(*xs, **canonical), *structs)
    except (TypeError, ValueError) as error:  # a combination the checks above should have refused
        raise OpError(
            f"{name}: operands {list(operand_types)} with {canonical} do not lower: {error}"
        ) from None
    out_type = TensorType(str(out.dtype), tuple(out.shape))
    check_tensor(out_type, "act", f"{name}: output")
    return out_type, canonical


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """What one op application costs per batch row (see `node_cost`).

    Attributes:
      work: operations: multiply-adds of a product, window elements of a pool,
        elements touched (a small factor for the multi-step ops) elsewhere.
      scratch_bytes: temporaries the engines hold while the op runs, beyond its
        operands and output (int64 intermediates, say).
      compile_units: size of the op's lowering, in units of one elementwise op
        (independent of the batch and of tensor sizes).
    """

    work: int
    scratch_bytes: int
    compile_units: int


def node_cost(
    name: str, operand_types: Sequence[TensorType], attrs: Mapping[str, Any], out_type: TensorType
) -> NodeCost:
    """Per-row cost of one checked op application (the types and canonical attributes that
    `check_node` saw and returned). A static estimate, the same on every node: the program's
    bounds (`MAX_WORK_PER_ROW`, `MAX_COMPILE_UNITS`, `MAX_ROW_BYTES`) and
    `Program.resource_estimate` add it up."""
    op = OPSET[name]
    work = op.work(operand_types, attrs, out_type) if op.work else _row(out_type)
    scratch = op.scratch * max(_row(operand_types[0]), _row(out_type))
    return NodeCost(work=int(work), scratch_bytes=int(scratch), compile_units=op.compile_units)
