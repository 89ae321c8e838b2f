"""The AIVM opset, version 1, written as plain NumPy: the yellow paper in code.

Every function here *is* the semantics of one op. It is slow and obvious on
purpose: products and sums are taken in int64 (or Python integers) where no
overflow can occur, and a 32-bit wrap is applied explicitly where the op
specifies one. It shares no code with the JAX lowering in
`aivm_jax.ops.lowering`; the tests hold the two equal bit for bit.

Conventions for every op:

* The first axis of every activation is the batch axis. No op mixes rows of a
  batch, so row ``i`` of any output depends only on row ``i`` of the inputs.
* Parameters (weights, biases, multipliers, tables) have no batch axis.
* Dtypes are NumPy's: ``int8`` activations and weights, ``int32`` accumulators.
* "Wraps" means two's complement modulo ``2**32``; "saturates" means clipped to
  the output dtype's range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "add",
    "argmax",
    "avg_pool",
    "batch_matmul",
    "bias_add",
    "concat",
    "conv2d",
    "flatten",
    "gather",
    "iota",
    "layer_norm",
    "matmul",
    "max_pool",
    "mean_pool",
    "relu",
    "requantize",
    "reshape",
    "softmax",
    "table",
    "transpose",
    "wrap_int32",
]

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Reduce int64 values modulo ``2**32`` into int32's two's complement range.

    >>> wrap_int32(np.array([2**31, -(2**31) - 1, 5], dtype=np.int64))
    array([-2147483648,  2147483647,           5], dtype=int32)
    """
    x = np.asarray(x, dtype=np.int64)
    return (np.mod(x + 2**31, 2**32) - 2**31).astype(np.int32)


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``y[..., n] = sum_k x[..., k] * w[k, n]``, exact, wrapped to int32.

    Args:
      x: int8 array of shape ``(batch, ..., K)``.
      w: int8 array of shape ``(K, N)``.

    Returns:
      int32 array of shape ``(batch, ..., N)``. The sum is exact in int64 and
      then wraps modulo ``2**32``; it can only wrap for ``K > 2**17``.
    """
    exact = x.astype(np.int64) @ w.astype(np.int64)
    return wrap_int32(exact)


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    *,
    strides: Sequence[int],
    padding: Sequence[Sequence[int]],
) -> np.ndarray:
    """2-D cross-correlation in NHWC/HWIO layout with zero padding, wrapped to int32.

    ``y[b, i, j, o] = sum_{p, q, c} xp[b, i*sh + p, j*sw + q, c] * w[p, q, c, o]``
    where ``xp`` is ``x`` padded with zeros by ``padding = ((top, bottom),
    (left, right))``.

    Args:
      x: int8 array of shape ``(batch, H, W, C)``.
      w: int8 array of shape ``(KH, KW, C, O)``.
      strides: ``(sh, sw)``, each >= 1.
      padding: ``((top, bottom), (left, right))``, each >= 0.

    Returns:
      int32 array of shape ``(batch, Ho, Wo, O)`` with
      ``Ho = (H + top + bottom - KH) // sh + 1`` (likewise ``Wo``); exact sums
      wrapped modulo ``2**32``.
    """
    (top, bottom), (left, right) = padding
    sh, sw = strides
    kh, kw, _, _ = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]), dtype=np.int64)
    w64 = w.astype(np.int64)
    for p in range(kh):
        for q in range(kw):
            patch = xp[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]
            out += np.einsum("bijc,co->bijo", patch, w64[p, q])
    return wrap_int32(out)


def bias_add(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``y[..., n] = x[..., n] + b[n]``, wrapped to int32.

    Args:
      x: int32 array of shape ``(batch, ..., N)``.
      b: int32 array of shape ``(N,)``.

    >>> bias_add(np.array([[2**31 - 1]], np.int32), np.array([1], np.int32))
    array([[-2147483648]], dtype=int32)
    """
    return wrap_int32(x.astype(np.int64) + b.astype(np.int64))


def requantize(
    x: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    *,
    out_dtype: str,
) -> np.ndarray:
    """Fixed-point rescale: ``y = saturate(floor((x * M + 2**(s-1)) / 2**s))``.

    This is ``x * M / 2**s`` rounded **half up** (ties go towards +infinity:
    ``-2.5 -> -2``, ``2.5 -> 3``), the rounding EZKL's rescale uses. For
    ``s = 0`` the rounding term is 0 and ``y = saturate(x * M)``.

    The product ``x * M`` is taken **exactly in 64 bits**: ``|x * M| <= 2**62``
    and the rounding term is at most ``2**61``, so the sum never overflows
    int64 and nothing wraps. The result then saturates to ``out_dtype``.

    Per-tensor or per-channel: ``multiplier`` and ``shift`` are either scalars
    (shape ``()``) or vectors of shape ``(N,)`` that apply along the last axis.

    Args:
      x: int32 array of shape ``(batch, ..., N)``.
      multiplier: int32 array of shape ``()`` or ``(N,)``, any int32 value.
      shift: int32 array of the same shape as ``multiplier``, values in ``[0, 62]``.
      out_dtype: ``"int8"`` (saturates to ``[-128, 127]``) or ``"int32"``.

    Returns:
      Array of ``out_dtype`` and the shape of ``x``.

    >>> requantize(np.array([[-5, 5, 3, 2**31 - 1]], np.int32), np.int32(1), np.int32(1),
    ...            out_dtype="int8")
    array([[ -2,   3,   2, 127]], dtype=int8)
    """
    m = multiplier.astype(np.int64)
    s = shift.astype(np.int64)
    # Python-integer arithmetic would also do; int64 is exact within the bounds above.
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    total = x.astype(np.int64) * m + half
    rounded = np.right_shift(total, s)  # arithmetic shift == floor division by 2**s
    info = np.iinfo(np.dtype(out_dtype))
    return np.clip(rounded, info.min, info.max).astype(out_dtype)


def relu(x: np.ndarray) -> np.ndarray:
    """``y = max(x, 0)`` elementwise; int8 or int32, dtype kept. Nothing wraps."""
    return np.where(x > 0, x, np.zeros_like(x))


def table(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Elementwise lookup: ``y = values[x + 128]``.

    Any function of one int8 value (sigmoid, tanh, gelu, ...) is a 256-entry
    table, computed off the inference path and stored in the program.

    Args:
      x: int8 array of any shape ``(batch, ...)``.
      values: int8 or int32 array of shape ``(256,)``; entry ``i`` is the
        output for input ``i - 128``.

    Returns:
      Array of ``values.dtype`` and the shape of ``x``.
    """
    return values[x.astype(np.int64) + 128]


def _pool_windows(x: np.ndarray, window, strides, padding):
    """Yield ``(i, j, block)``: each output position and the in-bounds part of its window."""
    (top, bottom), (left, right) = padding
    kh, kw = window
    sh, sw = strides
    h, w = x.shape[1], x.shape[2]
    ho = (h + top + bottom - kh) // sh + 1
    wo = (w + left + right - kw) // sw + 1
    for i in range(ho):
        r0 = i * sh - top
        rows = slice(max(r0, 0), min(r0 + kh, h))
        for j in range(wo):
            c0 = j * sw - left
            cols = slice(max(c0, 0), min(c0 + kw, w))
            yield i, j, x[:, rows, cols, :]


def _pool_output(x: np.ndarray, window, strides, padding) -> np.ndarray:
    (top, bottom), (left, right) = padding
    ho = (x.shape[1] + top + bottom - window[0]) // strides[0] + 1
    wo = (x.shape[2] + left + right - window[1]) // strides[1] + 1
    return np.zeros((x.shape[0], ho, wo, x.shape[3]), dtype=np.int64)


def max_pool(x, *, window, strides, padding) -> np.ndarray:
    """Maximum over each window of an NHWC int8 tensor; padded positions are ignored.

    Args:
      x: int8 array of shape ``(batch, H, W, C)``.
      window: ``(kh, kw)``; strides: ``(sh, sw)``; padding:
        ``((top, bottom), (left, right))`` with each pad smaller than the
        window along its axis, so every window holds an in-bounds element.

    Returns:
      int8 array of shape ``(batch, Ho, Wo, C)``, ``Ho = (H + top + bottom - kh) // sh + 1``.
    """
    out = _pool_output(x, window, strides, padding)
    for i, j, block in _pool_windows(x, window, strides, padding):
        out[:, i, j, :] = block.max(axis=(1, 2))
    return out.astype(x.dtype)


def avg_pool(x, *, window, strides, padding) -> np.ndarray:
    """Mean over each window of an NHWC int8 tensor, rounded half up.

    ``y = floor((2 * S + n) / (2 * n))`` where ``S`` is the sum of the window's
    in-bounds elements and ``n`` their count (padded positions are neither
    summed nor counted). That is ``S / n`` rounded half up: ``-2.5 -> -2``.
    The result of a mean of int8 values is always in int8's range.

    Args and shapes as for `max_pool`.
    """
    out = _pool_output(x, window, strides, padding)
    for i, j, block in _pool_windows(x, window, strides, padding):
        total = block.astype(np.int64).sum(axis=(1, 2))
        count = block.shape[1] * block.shape[2]
        out[:, i, j, :] = (2 * total + count) // (2 * count)
    return out.astype(x.dtype)


def reshape(x: np.ndarray, *, shape: Sequence[int]) -> np.ndarray:
    """Row-major reshape of the non-batch axes to ``shape``; the batch axis is kept.

    At most one entry of ``shape`` may be ``-1``: that axis takes whatever size
    makes the element count match (how a program reshapes a variable-length axis).
    """
    return x.reshape((x.shape[0], *shape))


def flatten(x: np.ndarray) -> np.ndarray:
    """Row-major flatten of the non-batch axes: ``(batch, ...) -> (batch, prod(...))``."""
    return x.reshape(x.shape[0], -1)


def transpose(x: np.ndarray, *, perm: Sequence[int]) -> np.ndarray:
    """Permute the non-batch axes: output axis ``1 + i`` is input axis ``1 + perm[i]``."""
    return np.transpose(x, (0, *[p + 1 for p in perm]))


def concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    """Concatenate same-dtype tensors along non-batch ``axis`` (>= 1, or negative)."""
    return np.concatenate(xs, axis=axis)


def argmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Index of the largest value along non-batch ``axis``; ties go to the lowest index.

    Returns an int32 array: the shape of ``x`` without ``axis``.
    """
    moved = np.moveaxis(x, axis, -1)
    best = np.zeros(moved.shape[:-1], dtype=np.int32)
    best_value = moved[..., 0].copy()
    for k in range(1, moved.shape[-1]):
        better = moved[..., k] > best_value  # strictly greater keeps the first maximum
        best = np.where(better, np.int32(k), best)
        best_value = np.where(better, moved[..., k], best_value)
    return best


# --------------------------------------------------------------------------- transformer ops


def gather(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Embedding lookup: ``y[..., :] = table[clip(ids[...], 0, V - 1), :]``.

    Args:
      ids: int32 array of shape ``(batch, ...)``. An id outside ``[0, V)`` is
        clamped to the nearest valid row (programs declare their id range, so
        `infer` refuses such inputs before they get here).
      table: int8 or int32 parameter of shape ``(V, D)``.

    Returns:
      Array of ``table.dtype`` and shape ``(batch, ..., D)``.
    """
    index = np.clip(ids.astype(np.int64), 0, table.shape[0] - 1)
    return table[index]


def iota(x: np.ndarray) -> np.ndarray:
    """Positions along the last axis: ``y[..., t] = t`` as int32, shaped like ``x``."""
    positions = np.arange(x.shape[-1], dtype=np.int32)
    return np.broadcast_to(positions, x.shape).copy()


def add(
    x: np.ndarray,
    y: np.ndarray,
    x_multiplier: np.ndarray,
    y_multiplier: np.ndarray,
    shift: np.ndarray,
    *,
    out_dtype: str,
) -> np.ndarray:
    """Add two tensors held at different scales: one fixed-point rescale of their sum.

    ``z = saturate(floor((x * Mx + y * My + 2**(s-1)) / 2**s))``, i.e.
    ``(x * Mx + y * My) / 2**s`` rounded half up (no rounding term when
    ``s = 0``). It is how a residual connection joins two branches.

    Exactness: ``|x|, |y| <= 2**31`` and ``|Mx|, |My| <= 2**30`` (checked when
    the program is built), so each product is at most ``2**61``, their sum plus
    the rounding term stays below ``2**63``, and nothing overflows int64.

    Args:
      x: int8 or int32 array of shape ``(batch, ..., N)``.
      y: int8 or int32 array of the shape of ``x``.
      x_multiplier: int32 parameter of shape ``()`` or ``(N,)`` (per channel
        along the last axis).
      y_multiplier: int32 parameter of the same kind.
      shift: int32 parameter of the same kind, values in ``[0, 62]``.
      out_dtype: ``"int8"`` or ``"int32"``; the result saturates to it.
    """
    s = shift.astype(np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    exact = x.astype(np.int64) * x_multiplier.astype(np.int64) + y.astype(np.int64) * y_multiplier.astype(
        np.int64
    )
    rounded = np.right_shift(exact + half, s)
    info = np.iinfo(np.dtype(out_dtype))
    return np.clip(rounded, info.min, info.max).astype(out_dtype)


LAYER_NORM_INPUT_LIMIT = 2**24
"""`layer_norm` saturates its input to ``[-2**24, 2**24]`` first (keeps every step in int64)."""


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: int) -> np.ndarray:
    """Integer layer normalization over the last axis.

    With ``D`` the last axis and ``v = clip(x, -2**24, 2**24)``:

    1. ``mean = floor(sum(v) / D)``; ``c = v - mean``;
    2. ``var = floor(sum(c**2) / D)``;
    3. ``r = max(isqrt(var + eps), 1)`` where ``isqrt`` is the floor of the
       exact square root;
    4. ``y = floor((2 * c * gamma + r) / (2 * r)) + beta``, i.e.
       ``c * gamma / r`` rounded half up, plus ``beta``; saturated to int32.

    ``gamma`` carries the float weight times the output scale (the input scale
    cancels out), ``beta`` the float bias at the output scale, and ``eps`` the
    float epsilon in squared input units. Everything is exact in int64:
    ``|c| <= 2**25``, ``c**2 * D < 2**63`` for ``D <= 2**13``, ``|2 c gamma| <= 2**57``.

    Args:
      x: int32 array of shape ``(batch, ..., D)``, ``D <= 8192``.
      gamma: int32 parameter of shape ``(D,)``.
      beta: int32 parameter of shape ``(D,)``.
      eps: integer in ``[0, 2**31)``.

    Returns:
      int32 array of the shape of ``x``.
    """
    d = x.shape[-1]
    v = np.clip(x.astype(np.int64), -LAYER_NORM_INPUT_LIMIT, LAYER_NORM_INPUT_LIMIT)
    mean = np.floor_divide(v.sum(axis=-1, keepdims=True), d)
    c = v - mean
    var = np.floor_divide((c * c).sum(axis=-1, keepdims=True), d)
    root = np.vectorize(lambda value: max(math.isqrt(int(value) + eps), 1), otypes=[np.int64])(var)
    y = np.floor_divide(2 * c * gamma.astype(np.int64) + root, 2 * root) + beta.astype(np.int64)
    return np.clip(y, _INT32_MIN, _INT32_MAX).astype(np.int32)


def batch_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of two activations, per row and per leading axis, wrapped to int32.

    ``z[i, ..., m, n] = sum_k a[i, ..., m, k] * b[i, ..., k, n]`` (attention's
    ``Q K^T`` and ``P V``). Each operand is int8 or int32; the exact sum wraps
    modulo ``2**32``.

    Args:
      a: array of shape ``(batch, ..., M, K)``.
      b: array of shape ``(batch, ..., K, N)``, the same leading axes.

    Returns:
      int32 array of shape ``(batch, ..., M, N)``.
    """
    bound = int(np.abs(a.astype(np.int64)).max()) * int(np.abs(b.astype(np.int64)).max()) * a.shape[-1]
    if bound < 2**63:  # the int64 sum cannot overflow
        return wrap_int32(np.matmul(a.astype(np.int64), b.astype(np.int64)))
    exact = np.matmul(a.astype(object), b.astype(object))  # Python integers: exact at any size
    return wrap_int32(np.mod(exact + 2**31, 2**32).astype(np.int64) - 2**31)


def _attention_keep(x_shape: tuple[int, ...], mask: np.ndarray, causal: bool) -> np.ndarray:
    """Boolean array of ``x_shape``: which scores take part (mask broadcast, causal applied)."""
    keep = (mask != 0).reshape(mask.shape[0], *([1] * (len(x_shape) - 2)), mask.shape[1])
    keep = np.broadcast_to(keep, x_shape)
    if causal:
        tq, tk = x_shape[-2], x_shape[-1]
        query = np.arange(tq)[:, None]
        key = np.arange(tk)[None, :]
        keep = keep & (key <= query + (tk - tq))
    return keep


def softmax(
    x: np.ndarray,
    mask: np.ndarray,
    table: np.ndarray,
    *,
    causal: bool,
    out_bits: int,
) -> np.ndarray:
    """Integer softmax over the last axis in base 2, with a key mask and optional causality.

    ``x`` holds scores in units of ``2**-k`` bits (``2**k`` = the table's
    length): ``p_j = 2**((x_j - max) / 2**k) / sum``. A quantizer folds the
    ``log2(e) / sqrt(d)`` factor of attention into the requantization before.

    1. Kept positions: ``mask[b, j] != 0`` and, if ``causal``, key ``j <=
       i + (Tk - Tq)`` for query ``i`` (the last query sees every key).
    2. ``m = max`` of the kept ``x`` of the row; ``d = m - x >= 0`` (int64).
    3. ``e = table[d mod 2**k] >> min(d div 2**k, 31)``; ``e = 0`` where not kept.
       ``table[f]`` is ``2**30 * 2**(-f / 2**k)`` rounded, computed when the
       program is built; any values in ``[0, 2**30]`` are allowed.
    4. ``S = sum(e)`` and one reciprocal per row, ``inv = floor(2**62 / S)``;
       ``p = floor((e * inv + 2**(61 - out_bits)) / 2**(62 - out_bits))``, i.e.
       ``e / S`` at ``out_bits`` fractional bits, rounded half up after the
       reciprocal (one division per row instead of one per score); ``p = 0``
       for a row with ``S = 0`` (every key masked). Since ``e <= S``,
       ``e * inv <= 2**62`` and ``p <= 2**out_bits``: nothing overflows int64.

    Masked keys contribute exactly zero, so padding never changes a kept row.

    Args:
      x: int32 array of shape ``(batch, ..., Tq, Tk)``.
      mask: int8 activation of shape ``(batch, Tk)``; nonzero means "attend".
      table: int32 parameter of shape ``(2**k,)``, ``1 <= k <= 16``.
      causal: apply the causal rule above.
      out_bits: ``1..30``; outputs lie in ``[0, 2**out_bits]``.

    Returns:
      int32 array of the shape of ``x``.
    """
    k = int(table.shape[0]).bit_length() - 1
    keep = _attention_keep(x.shape, mask, causal)
    scores = x.astype(np.int64)
    lowest = np.iinfo(np.int64).min
    row_max = np.where(keep, scores, lowest).max(axis=-1, keepdims=True)
    distance = np.where(keep, row_max - scores, 0)
    whole = np.minimum(distance // (2**k), 31)
    fraction = distance % (2**k)
    e = np.where(keep, table.astype(np.int64)[fraction] // (2**whole), 0)
    total = e.sum(axis=-1, keepdims=True)
    inverse = np.where(total > 0, 2**62 // np.maximum(total, 1), 0)
    p = (e * inverse + 2 ** (61 - out_bits)) // 2 ** (62 - out_bits)
    return np.where(total > 0, p, 0).astype(np.int32)


def mean_pool(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the kept positions of axis 1, rounded half up: ``(batch, T, D) -> (batch, D)``.

    ``y = floor((2 * S + n) / (2 * n))`` with ``S`` the exact sum of the rows
    ``t`` where ``mask[b, t] != 0`` and ``n`` their count; ``y = 0`` when
    ``n = 0``. The mean of int32 values lies in int32's range.

    Args:
      x: int8 or int32 array of shape ``(batch, T, D)``.
      mask: int8 activation of shape ``(batch, T)``.

    Returns:
      int32 array of shape ``(batch, D)``.
    """
    keep = (mask != 0)[:, :, None]
    total = np.where(keep, x.astype(np.int64), 0).sum(axis=1)
    count = keep.sum(axis=1).astype(np.int64)
    safe = np.maximum(count, 1)
    return np.where(count > 0, (2 * total + count) // (2 * safe), 0).astype(np.int32)
