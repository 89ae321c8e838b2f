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
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "argmax",
    "avg_pool",
    "bias_add",
    "concat",
    "conv2d",
    "flatten",
    "matmul",
    "max_pool",
    "relu",
    "requantize",
    "reshape",
    "table",
    "transpose",
]


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """int8 ``(batch, ..., K)`` x int8 ``(K, N)`` -> int32 ``(batch, ..., N)``."""
    return lax.dot_general(
        x,
        w,
        dimension_numbers=(((x.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.int32,
    )


def conv2d(x, w, *, strides: Sequence[int], padding: Sequence[Sequence[int]]) -> jax.Array:
    """int8 NHWC x int8 HWIO -> int32 NHWC, zero padding, int32 accumulation."""
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(strides),
        padding=tuple(tuple(p) for p in padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.int32,
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
    against an in-bounds value (every window has one)."""
    dims, steps, pads = _window(window, strides, padding)
    init = jnp.array(jnp.iinfo(x.dtype).min, x.dtype)
    return lax.reduce_window(x, init, lax.max, dims, steps, pads)


def avg_pool(x, *, window, strides, padding) -> jax.Array:
    """Window sums and in-bounds counts by ``reduce_window(add)`` in int32, then
    ``(2S + n) // (2n)``. Sums of at most 2**23 int8 values cannot overflow."""
    dims, steps, pads = _window(window, strides, padding)
    zero = jnp.array(0, jnp.int32)
    total = lax.reduce_window(x.astype(jnp.int32), zero, lax.add, dims, steps, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), jnp.int32)
    count = lax.reduce_window(ones, zero, lax.add, dims, steps, pads)
    return ((2 * total + count) // (2 * count)).astype(x.dtype)


def reshape(x: jax.Array, *, shape: Sequence[int]) -> jax.Array:
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
