"""The opset registry: which ops exist in version 1, their operand kinds, and their checks.

An op's operands are either *activations* (values computed by the program,
with a leading batch axis) or *parameters* (tensors stored in the program,
without one). Keeping the second operand of every weighted op a parameter is
what guarantees that no op mixes the rows of a batch.

`check_node` validates dtypes, ranks, attributes and parameter values before
anything runs, and returns the output type; both implementations then assume
valid operands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from aivm_jax._errors import OpError
from aivm_jax.ops import lowering, reference

__all__ = ["OPSET", "OPSET_VERSION", "OpDef", "TensorType", "check_node"]

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
    """

    name: str
    operands: tuple[str, ...]
    attrs: Mapping[str, Callable[[Any], Any]]
    check: Callable[[Sequence[TensorType], Mapping[str, Any]], None]
    lowering: Callable[..., Any]
    reference: Callable[..., Any]
    check_params: Callable[[Sequence[np.ndarray]], None] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def variadic(self) -> bool:
        return self.operands[-1] == "..."


# --------------------------------------------------------------------------- attrs


def _ints(n: int, minimum: int, what: str) -> Callable[[Any], tuple[int, ...]]:
    def normalize(value: Any) -> tuple[int, ...]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
        ):
            raise OpError(f"{what} must be {n} integers >= {minimum}, got {value!r}")
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
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in value)
        or list(value).count(-1) > 1
    ):
        raise OpError(f"shape must be positive integers with at most one -1, got {value!r}")
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
    if not isinstance(value, (list, tuple)) or sorted(value) != list(range(len(value))):
        raise OpError(f"perm must be a permutation of 0..n-1, got {value!r}")
    return tuple(int(v) for v in value)


# --------------------------------------------------------------------------- checks


def _need(t: TensorType, dtypes: Sequence[str], rank: int | None, what: str) -> None:
    if t.dtype not in dtypes:
        raise OpError(f"{what} must have dtype {' or '.join(dtypes)}, got {t.dtype}")
    if rank is not None and len(t.shape) != rank:
        raise OpError(f"{what} must have rank {rank}, got shape {t.shape}")


def _check_matmul(ts, attrs):
    x, w = ts
    _need(x, ["int8"], None, "matmul input")
    _need(w, ["int8"], 2, "matmul weight")
    if len(x.shape) < 2 or x.shape[-1] != w.shape[0]:
        raise OpError(f"matmul: input {x.shape} does not contract with weight {w.shape}")


def _check_conv2d(ts, attrs):
    x, w = ts
    _need(x, ["int8"], 4, "conv2d input (batch, H, W, C)")
    _need(w, ["int8"], 4, "conv2d weight (KH, KW, C, O)")
    if x.shape[3] != w.shape[2]:
        raise OpError(f"conv2d: input has {x.shape[3]} channels, weight expects {w.shape[2]}")
    _check_window(x, w.shape[:2], attrs["padding"], "conv2d", pad_below_window=False)


def _check_window(x, window, padding, name, *, pad_below_window: bool):
    for axis, (size, k, (lo, hi)) in enumerate(zip(x.shape[1:3], window, padding)):
        if size + lo + hi < k:
            raise OpError(f"{name}: window {k} larger than padded axis {axis + 1} ({size + lo + hi})")
        if pad_below_window and (lo >= k or hi >= k):
            raise OpError(f"{name}: padding {(lo, hi)} must be smaller than the window {k}")


def _check_bias_add(ts, attrs):
    x, b = ts
    _need(x, ["int32"], None, "bias_add input")
    _need(b, ["int32"], 1, "bias")
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
        _check_window(ts[0], attrs["window"], attrs["padding"], name, pad_below_window=True)

    return check


def _check_reshape(ts, attrs):
    size = int(np.prod(ts[0].shape[1:], dtype=np.int64))
    known = int(np.prod([d for d in attrs["shape"] if d != -1], dtype=np.int64))
    fits = size % known == 0 if -1 in attrs["shape"] else known == size
    if not fits:
        raise OpError(f"reshape: cannot reshape {ts[0].shape[1:]} to {attrs['shape']}")


def _check_any(ts, attrs):
    _need(ts[0], INT_DTYPES, None, "input")


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
    if not 1 <= x.shape[-1] <= 8192:
        raise OpError(f"layer_norm: the normalized axis must have 1..8192 elements, got {x.shape[-1]}")
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
        _op("matmul", ("act", "param"), _check_matmul),
        _op(
            "conv2d",
            ("act", "param"),
            _check_conv2d,
            {"strides": _ints(2, 1, "strides"), "padding": _padding},
        ),
        _op("bias_add", ("act", "param"), _check_bias_add),
        _op(
            "requantize",
            ("act", "param", "param"),
            _check_requantize,
            {"out_dtype": _out_dtype},
            check_params=_check_shift_values,
        ),
        _op("relu", ("act",), _check_relu),
        _op("table", ("act", "param"), _check_table),
        _op("max_pool", ("act",), _check_pool("max_pool"), _WINDOW_ATTRS),
        _op("avg_pool", ("act",), _check_pool("avg_pool"), _WINDOW_ATTRS),
        _op("reshape", ("act",), _check_reshape, {"shape": _shape}),
        _op("flatten", ("act",), _check_any),
        _op("transpose", ("act",), _check_transpose, {"perm": _perm}),
        _op("concat", ("act", "..."), _check_concat, {"axis": _int}),
        _op("argmax", ("act",), _check_argmax, {"axis": _int}, defaults={"axis": -1}),
        _op("gather", ("act", "param"), _check_gather),
        _op("iota", ("act",), _check_any),
        _op(
            "add",
            ("act", "act", "param", "param", "param"),
            _check_add,
            {"out_dtype": _out_dtype},
            check_params=_check_add_values,
        ),
        _op(
            "layer_norm", ("act", "param", "param"), _check_layer_norm, {"eps": _int_in(0, 2**31 - 1, "eps")}
        ),
        _op("batch_matmul", ("act", "act"), _check_batch_matmul),
        _op(
            "softmax",
            ("act", "act", "param"),
            _check_softmax,
            {"causal": _bool, "out_bits": _int_in(1, 30, "out_bits")},
            check_params=_check_softmax_values,
        ),
        _op("mean_pool", ("act", "act"), _check_mean_pool),
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


def check_node(
    name: str,
    operand_types: Sequence[TensorType],
    operand_kinds: Sequence[str],
    attrs: Mapping[str, Any],
    params: Sequence[np.ndarray] = (),
) -> tuple[TensorType, dict[str, Any]]:
    """Check one op application; return its output type and canonical attributes.

    Args:
      name: op name.
      operand_types: types of the operands (activations with their batch axis).
      operand_kinds: ``"act"`` or ``"param"`` per operand, as the program has them.
      attrs: the node's attributes as written.
      params: values of the parameter operands, in order, for value checks.

    Raises:
      OpError: unknown op, wrong operand count/kind/dtype/shape or attributes.
    """
    op = OPSET.get(name)
    if op is None:
        raise OpError(f"unknown op {name!r}; opset {OPSET_VERSION} has {sorted(OPSET)}")
    expected = list(op.operands)
    if op.variadic:
        expected = expected[:-1] + [expected[-2]] * (len(operand_kinds) - len(expected) + 1)
    if list(operand_kinds) != expected or not operand_kinds:
        raise OpError(f"{name}: operands must be {op.operands}, got {tuple(operand_kinds)}")
    canonical = normalize_attrs(op, attrs)
    op.check(operand_types, canonical)
    if op.check_params is not None:
        op.check_params(params)
    structs = [jax.ShapeDtypeStruct(t.shape, np.dtype(t.dtype)) for t in operand_types]
    out = jax.eval_shape(lambda *xs: op.lowering(*xs, **canonical), *structs)
    return TensorType(str(out.dtype), tuple(out.shape)), canonical
