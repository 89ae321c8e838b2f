"""JAX lowerings of the AIVM opset, version 1.

Each function computes exactly what its namesake in `aivm_jax.ops.reference`
specifies (read the semantics there); this module only says *how* XLA is made
to compute it. Operands are assumed already checked by `aivm_jax.ops.check_node`.

Why each lowering is exact:

* Integer adds and multiplies in XLA are two's complement and wrap, so any
  reduction order, tiling or sharding gives the same bits.
* ``matmul``/``conv2d`` accumulate int8 products in int32
  (``preferred_element_type``), never in a float type.
* ``requantize`` forms the 64-bit product inside a scoped ``jax.enable_x64``,
  so it works whether or not the user enabled 64-bit types globally.
* ``//`` on integers floors (unlike ``lax.div``, which truncates) and ``>>`` on
  signed integers is arithmetic, which is what half-up rounding needs.
* The transformer ops (``layer_norm``, ``softmax``, ``mean_pool``, ``add``)
  compute in int64 inside ``jax.enable_x64``; the reference states the bounds
  that keep every step exact. Square roots are bitwise integer square roots,
  never ``sqrt`` on floats; shift amounts are clamped below the bit width,
  where XLA's shifts are fully defined.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aivm_jax.ops._gemm import int8_matmul
from aivm_jax.ops._vnni import (
    ADD_TARGET_NAME,
    INT32_TARGET_NAME,
    LAYER_NORM_TARGET_NAME,
    POOL_TARGET_NAME,
    SOFTMAX_TARGET_NAME,
    on_cpu,
)

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
]


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """int8 ``(batch, ..., K)`` x int8 ``(K, N)`` -> int32 ``(batch, ..., N)`` by `int8_matmul`."""
    return int8_matmul(x, w)


PATCHES_MAX_CHANNEL_PRODUCT = 256
"""`conv2d` on CPU runs as im2col + a matrix product up to this ``C * O`` (see there)."""


def conv2d(x, w, *, strides: Sequence[int], padding: Sequence[Sequence[int]]) -> jax.Array:
    """int8 NHWC x int8 HWIO -> int32 NHWC, zero padding, int32 accumulation.

    On CPU with few channels (``2 <= C`` and ``C * O <= 256``, depthwise convolutions as the
    importer writes them included): the patches (im2col) times ``w`` as one ``(KH * KW * C, O)``
    integer matrix product (`_conv2d_patches`), where XLA's CPU convolution, which has no fast
    integer path, is slowest (2-4x at 8x8 inputs with 8 channels, strided or depthwise); with one
    input channel, or from 16 x 32 channels up, XLA's own was as fast or faster. Integer sums in
    any order are the same integers (int32, wrapping)."""
    strides = tuple(strides)
    padding = tuple(tuple(p) for p in padding)

    def xla(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            window_strides=strides,
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.int32,
        )

    if not (2 <= w.shape[2] and w.shape[2] * w.shape[3] <= PATCHES_MAX_CHANNEL_PRODUCT):
        return xla(x, w)
    return lax.platform_dependent(x, w, cpu=functools.partial(_conv2d_patches, strides, padding), default=xla)


def _conv2d_patches(strides, padding, x, w) -> jax.Array:
    """`conv2d` as im2col: the ``KH * KW`` shifted (strided) views of the zero-padded input side by
    side on the channel axis, in ``w``'s ``(kh, kw, c)`` order, times ``w`` as one matrix.

    ``x`` first goes through a product with the identity (exact): XLA never fuses a product into
    its readers, so ``x``'s producer (a requantize, say) runs once, where XLA otherwise fused it
    into each of the ``KH * KW`` views and ran it that many times (2x slower overall)."""
    kh, kw, c, o = w.shape
    (sh, sw), ((top, bottom), (left, right)) = strides, padding
    eye = jnp.eye(c, dtype=x.dtype)
    x = lax.dot_general(x, eye, (((3,), (0,)), ((), ())), preferred_element_type=jnp.int32).astype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    views = [
        xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return lax.dot_general(
        patches, w.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )


def bias_add(x: jax.Array, b: jax.Array) -> jax.Array:
    """int32 + int32 broadcast along the last axis; wraps."""
    return x + b


def requantize(x, multiplier, shift, *, out_dtype: str) -> jax.Array:
    """Half-up rounded ``x * M / 2**s`` with the product in int64, then saturated."""
    with jax.enable_x64(True):
        s = shift.astype(jnp.int64)
        half = jnp.where(s > 0, jnp.left_shift(jnp.int64(1), jnp.maximum(s - 1, 0)), 0)
        total = x.astype(jnp.int64) * multiplier.astype(jnp.int64) + half
        rounded = lax.shift_right_arithmetic(total, jnp.broadcast_to(s, total.shape))
        info = jnp.iinfo(out_dtype)
        return jnp.clip(rounded, info.min, info.max).astype(out_dtype)


def relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)``, dtype kept."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def table(x: jax.Array, values: jax.Array) -> jax.Array:
    """Gather ``values[x + 128]``; the index is formed in int32 so it cannot wrap."""
    return jnp.take(values, x.astype(jnp.int32) + 128, axis=0, mode="clip")


def _window(window, strides, padding):
    return (
        (1, *window, 1),
        (1, *strides, 1),
        ((0, 0), *[tuple(p) for p in padding], (0, 0)),
    )


def max_pool(x, *, window, strides, padding) -> jax.Array:
    """``reduce_window(max)`` padded with the dtype's minimum, which never wins
    against an in-bounds value (every window has one). int8 on VNNI CPUs: the
    project's pooling kernel (same integers)."""

    def xla(x):
        dims, steps, pads = _window(window, strides, padding)
        init = jnp.array(jnp.iinfo(x.dtype).min, x.dtype)
        return lax.reduce_window(x, init, lax.max, dims, steps, pads)

    return _pool(x, xla, average=False, window=window, strides=strides, padding=padding)


def avg_pool(x, *, window, strides, padding) -> jax.Array:
    """Window sums by ``reduce_window(add)`` in int32, then ``(2S + n) // (2n)`` in int32:
    exact for windows of up to `aivm_jax.ops.AVG_POOL_EXACT_WINDOW` elements (``255 n < 2**31``),
    which validation enforces. The in-bounds counts ``n`` depend on the geometry alone and are
    computed here, per axis, as a constant (a ``reduce_window`` over ones would be constant-folded
    by XLA at compile time, ``Ho Wo kh kw`` steps). int8 on VNNI CPUs: the project's pooling
    kernel (same integers)."""

    def xla(x):
        dims, steps, pads = _window(window, strides, padding)
        zero = jnp.array(0, jnp.int32)
        total = lax.reduce_window(x.astype(jnp.int32), zero, lax.add, dims, steps, pads)
        count = jnp.asarray(_in_bounds_counts(x.shape[1:3], window, strides, padding))
        return ((2 * total + count) // (2 * count)).astype(x.dtype)

    return _pool(x, xla, average=True, window=window, strides=strides, padding=padding)


def _in_bounds_counts(size, window, strides, padding) -> np.ndarray:
    """int32 ``(1, Ho, Wo, 1)``: how many in-bounds elements each pooling window holds."""
    per_axis = []
    for n, k, s, (lo, hi) in zip(size, window, strides, padding):
        starts = np.arange((n + lo + hi - k) // s + 1, dtype=np.int64) * s - lo
        per_axis.append(np.minimum(starts + k, n) - np.maximum(starts, 0))
    rows, cols = per_axis
    return (rows[:, None] * cols[None, :]).astype(np.int32)[None, :, :, None]


def _pool(x, xla, *, average: bool, window, strides, padding) -> jax.Array:
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, padding
    if (
        x.dtype != jnp.int8 or kh * kw > 2**22
    ):  # the kernel's int32 bound (validation keeps windows far below)
        return xla(x)
    out_hw = ((x.shape[1] + top + bottom - kh) // sh + 1, (x.shape[2] + left + right - kw) // sw + 1)
    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, x.shape[3]), jnp.int8)
    geometry = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "top": top, "left": left}
    return on_cpu(POOL_TARGET_NAME, out, xla, x, average=average, **geometry)


def reshape(x: jax.Array, *, shape: Sequence[int]) -> jax.Array:
    """A ``-1`` entry is inferred, as in the reference."""
    return jnp.reshape(x, (x.shape[0], *shape))


def flatten(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (x.shape[0], -1))


def transpose(x: jax.Array, *, perm: Sequence[int]) -> jax.Array:
    return jnp.transpose(x, (0, *[p + 1 for p in perm]))


def concat(*xs: jax.Array, axis: int) -> jax.Array:
    return jnp.concatenate(xs, axis=axis)


def argmax(x: jax.Array, *, axis: int = -1) -> jax.Array:
    """``jnp.argmax`` returns the first maximal index, as the semantics require."""
    return jnp.argmax(x, axis=axis).astype(jnp.int32)


def gather(ids: jax.Array, table: jax.Array) -> jax.Array:
    """``table[clip(ids)]`` by ``jnp.take`` with clamping indices."""
    return jnp.take(table, ids, axis=0, mode="clip")


def iota(x: jax.Array) -> jax.Array:
    """``lax.broadcasted_iota`` along the last axis."""
    return lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)


ADD_KERNEL_MAX_ELEMENTS = 1 << 16


def _half(s):
    return jnp.where(s > 0, jnp.left_shift(jnp.int64(1), jnp.maximum(s - 1, 0)), 0)


def add(x, y, x_multiplier, y_multiplier, shift, *, out_dtype: str) -> jax.Array:
    """``(x Mx + y My) / 2**s`` rounded half up with int64 products, then saturated.
    Up to ``ADD_KERNEL_MAX_ELEMENTS`` on VNNI CPUs: the project's kernel
    (``_native/int_add.cc``, same integers). As a custom call its result is computed
    once, on the calling thread, where XLA would fuse a residual stream's adds into
    each reader, recompute the earlier ones and split each small loop over two
    threads (char-gpt, 16 tokens: 0.14 ms instead of 0.23 ms). Larger tensors stay
    with XLA, whose fusion with the producers (the bias add) saves a pass over memory
    (MiniLM, 256 x 16 tokens: 92 ms instead of 120 ms)."""
    small = math.prod(x.shape) <= ADD_KERNEL_MAX_ELEMENTS
    if small and x.dtype in (jnp.int8, jnp.int32) and y.dtype in (jnp.int8, jnp.int32) and x.ndim >= 1:

        def xla(*operands):  # saturated to out_dtype, held in int32 like the kernel's result
            return _add_xla(*operands, out_dtype=out_dtype).astype(jnp.int32)

        info = jnp.iinfo(out_dtype)
        channels = (x.shape[-1],)
        operands = [x.astype(jnp.int32), y.astype(jnp.int32)]
        operands += [jnp.broadcast_to(p, channels) for p in (x_multiplier, y_multiplier, shift)]
        out = jax.ShapeDtypeStruct(x.shape, jnp.int32)
        z = on_cpu(ADD_TARGET_NAME, out, xla, *operands, low=int(info.min), high=int(info.max))
        return z.astype(out_dtype)
    return _add_xla(x, y, x_multiplier, y_multiplier, shift, out_dtype=out_dtype)


def _add_xla(x, y, x_multiplier, y_multiplier, shift, *, out_dtype: str) -> jax.Array:
    with jax.enable_x64(True):
        s = shift.astype(jnp.int64)
        total = x.astype(jnp.int64) * x_multiplier.astype(jnp.int64)
        total = total + y.astype(jnp.int64) * y_multiplier.astype(jnp.int64) + _half(s)
        rounded = lax.shift_right_arithmetic(total, jnp.broadcast_to(s, total.shape))
        info = jnp.iinfo(out_dtype)
        return jnp.clip(rounded, info.min, info.max).astype(out_dtype)


_ISQRT_BITS = 26  # var + eps < 2**51, so its square root has at most 26 bits


def _isqrt(v: jax.Array) -> jax.Array:
    """Floor square root of int64 values in ``[0, 2**52)``, one bit at a time."""
    root = jnp.zeros_like(v)
    for bit in range(_ISQRT_BITS - 1, -1, -1):
        candidate = root | (1 << bit)
        root = jnp.where(candidate * candidate <= v, candidate, root)
    return root


def layer_norm(x, gamma, beta, *, eps: int) -> jax.Array:
    """Integer mean, variance and bitwise square root in int64, then half-up division.
    On VNNI CPUs the project's row-wise kernel (``_native/int_layer_norm.cc``, same
    integers); being a custom call, it also keeps XLA from re-deriving the normalized
    rows inside every consumer's fusion, which grew with depth in deep programs."""

    def xla(x, gamma, beta):
        return _layer_norm_xla(x, gamma, beta, eps=eps)

    if x.dtype == jnp.int32 and gamma.dtype == jnp.int32 and beta.dtype == jnp.int32:
        out = jax.ShapeDtypeStruct(x.shape, jnp.int32)
        return on_cpu(LAYER_NORM_TARGET_NAME, out, xla, x, gamma, beta, eps=eps)
    return xla(x, gamma, beta)


def _layer_norm_xla(x, gamma, beta, *, eps: int) -> jax.Array:
    limit = 2**24
    with jax.enable_x64(True):
        d = x.shape[-1]
        v = jnp.clip(x.astype(jnp.int64), -limit, limit)
        mean = jnp.floor_divide(jnp.sum(v, axis=-1, keepdims=True), d)
        c = v - mean
        var = jnp.floor_divide(jnp.sum(c * c, axis=-1, keepdims=True), d)
        root = jnp.maximum(_isqrt(var + eps), 1)
        y = jnp.floor_divide(2 * c * gamma.astype(jnp.int64) + root, 2 * root) + beta.astype(jnp.int64)
        return jnp.clip(y, -(2**31), 2**31 - 1).astype(jnp.int32)


def batch_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """Batched ``dot_general`` over every leading axis; int8 x int8 accumulates in
    int32 directly, anything else is widened to int32 first (products wrap).
    int32 x int8 on VNNI CPUs: the project's byte-plane kernel (same integers)."""
    if a.dtype == jnp.int8 and b.dtype == jnp.int8:
        return int8_matmul(a, b)
    if a.dtype == jnp.int32 and b.dtype == jnp.int8:
        out = jax.ShapeDtypeStruct((*a.shape[:-1], b.shape[-1]), jnp.int32)
        return on_cpu(INT32_TARGET_NAME, out, _batch_matmul_int32, a, b)
    return _batch_matmul_int32(a, b)


def _batch_matmul_int32(a: jax.Array, b: jax.Array) -> jax.Array:
    batch = tuple(range(a.ndim - 2))
    a, b = a.astype(jnp.int32), b.astype(jnp.int32)
    return lax.dot_general(
        a,
        b,
        dimension_numbers=(((a.ndim - 1,), (b.ndim - 2,)), (batch, batch)),
        preferred_element_type=jnp.int32,
    )


def _keep(x_shape, mask, causal):
    keep = (mask != 0).reshape(mask.shape[0], *([1] * (len(x_shape) - 2)), mask.shape[1])
    keep = jnp.broadcast_to(keep, x_shape)
    if causal:
        tq, tk = x_shape[-2], x_shape[-1]
        query = lax.broadcasted_iota(jnp.int32, (tq, tk), 0)
        key = lax.broadcasted_iota(jnp.int32, (tq, tk), 1)
        keep = keep & (key <= query + (tk - tq))
    return keep


def softmax(x, mask, table, *, causal: bool, out_bits: int) -> jax.Array:
    """Masked max in int32; the distance ``m - x`` (in ``[0, 2**32)``) in uint32, where
    it is exact; table lookup and shift in int32; row sums, the per-row reciprocal
    and the normalizing product in int64. On VNNI CPUs the project's row-wise
    kernel (``_native/int_softmax.cc``, same integers)."""

    def xla(x, mask, table):
        return _softmax_xla(x, mask, table, causal=causal, out_bits=out_bits)

    if x.dtype == jnp.int32 and mask.dtype == jnp.int8 and table.dtype == jnp.int32:
        out = jax.ShapeDtypeStruct(x.shape, jnp.int32)
        return on_cpu(SOFTMAX_TARGET_NAME, out, xla, x, mask, table, causal=causal, out_bits=out_bits)
    return xla(x, mask, table)


def _softmax_xla(x, mask, table, *, causal: bool, out_bits: int) -> jax.Array:
    k = int(table.shape[0]).bit_length() - 1
    keep = _keep(x.shape, mask, causal)
    row_max = jnp.max(jnp.where(keep, x, jnp.iinfo(jnp.int32).min), axis=-1, keepdims=True)
    distance = row_max.astype(jnp.uint32) - x.astype(jnp.uint32)  # wraps to the exact m - x >= 0
    whole = jnp.minimum(distance >> k, 31).astype(jnp.int32)
    fraction = (distance & (2**k - 1)).astype(jnp.int32)
    e = jnp.where(keep, jnp.take(table, fraction, mode="clip") >> whole, 0)
    with jax.enable_x64(True):
        e64 = e.astype(jnp.int64)
        total = jnp.sum(e64, axis=-1, keepdims=True)
        inverse = jnp.where(total > 0, (jnp.int64(1) << 62) // jnp.maximum(total, 1), 0)
        p = (e64 * inverse + (jnp.int64(1) << (61 - out_bits))) >> (62 - out_bits)
        return jnp.where(total > 0, p, 0).astype(jnp.int32)


def mean_pool(x, mask) -> jax.Array:
    """Masked int64 sums and counts over axis 1, then ``(2S + n) // (2n)``."""
    with jax.enable_x64(True):
        keep = (mask != 0)[:, :, None]
        total = jnp.sum(jnp.where(keep, x.astype(jnp.int64), 0), axis=1)
        count = jnp.sum(keep.astype(jnp.int64), axis=1)
        safe = jnp.maximum(count, 1)
        return jnp.where(count > 0, (2 * total + count) // (2 * safe), 0).astype(jnp.int32)
