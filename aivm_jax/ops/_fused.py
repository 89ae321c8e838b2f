"""Op chains as one fused computation: the composition of the opset's lowerings, computed on VNNI
CPUs by one of the project's kernels (``_native/*.cc``) where it fits.

Each function returns exactly the integers of its ops applied one by one (the
``unfused`` composition is also what runs on other backends), so using one never
changes a bit. The runtime's planner (`aivm_jax.runtime._fusion`) decides where a
program's chains are fused.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aivm_jax.ops import lowering
from aivm_jax.ops._gemm import pack_weights
from aivm_jax.ops._vnni import (
    ATTENTION_INT8_TARGET_NAME,
    ATTENTION_TARGET_NAME,
    CONV_TARGET_NAME,
    DENSE_PACKED_TARGET_NAME,
    DENSE_TARGET_NAME,
    LAYER_NORM_INT8_TARGET_NAME,
    TABLE_REQUANTIZE_TARGET_NAME,
    on_cpu,
    register_kernel,
)

__all__ = [
    "TABLE_KERNEL_MAX_ELEMENTS",
    "attention",
    "conv_dense",
    "dense",
    "layer_norm_requantized",
    "table_requantized",
]


def dense(x, w, bias, multiplier, shift, *, out_dtype: str, relu: bool) -> jax.Array:
    """int8 ``(batch, ..., K)`` x int8 ``(K, N)`` [+ int32 bias ``(N,)``], requantized to ``out_dtype``
    (half-up, int64 product, saturated) [then relu]: the opset ops' integers, one pass on VNNI CPUs."""

    def unfused(x, w, bias, multiplier, shift):
        y = lowering.matmul(x, w)
        y = lowering.bias_add(y, bias)
        y = lowering.requantize(y, multiplier, shift, out_dtype=out_dtype)
        return lowering.relu(y) if relu else y

    n = w.shape[1]
    operands = (x, w, *_per_column(bias, multiplier, shift, n))
    out = jax.ShapeDtypeStruct((*x.shape[:-1], n), jnp.dtype(out_dtype))
    constant = isinstance(w, np.ndarray) and w.dtype == np.int8 and w.size > 0
    if constant and x.dtype == jnp.int8 and register_kernel():
        # Constant weights (a program's parameters compiled in): packed once here, not on every call.
        panels, init = pack_weights(w)

        def packed(x, w, *rest):
            return jax.ffi.ffi_call(DENSE_PACKED_TARGET_NAME, out)(x, panels, init, *rest, relu=relu)

        return lax.platform_dependent(*operands, cpu=packed, default=unfused)
    return on_cpu(DENSE_TARGET_NAME, out, unfused, *operands, relu=relu)


def conv_dense(x, w, bias, multiplier, shift, *, strides, padding, out_dtype: str, relu: bool) -> jax.Array:
    """`dense` with a conv2d head: int8 NHWC ``x``, int8 HWIO ``w``, zero padding -> ``(batch, Ho, Wo, O)``;
    on VNNI CPUs one pass with the patches gathered inside the kernel (implicit im2col)."""

    def unfused(x, w_matrix, bias, multiplier, shift):
        y = lowering.conv2d(x, w_matrix.reshape(w.shape), strides=strides, padding=padding)
        y = lowering.bias_add(y, bias)
        y = lowering.requantize(y, multiplier, shift, out_dtype=out_dtype)
        return lowering.relu(y) if relu else y

    kh, kw, c, o = w.shape
    (sh, sw), ((top, bottom), (left, right)) = strides, padding
    ho = (x.shape[1] + top + bottom - kh) // sh + 1
    wo = (x.shape[2] + left + right - kw) // sw + 1
    out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, o), jnp.dtype(out_dtype))
    geometry = {
        "kh": kh,
        "kw": kw,
        "sh": sh,
        "sw": sw,
        "top": top,
        "bottom": bottom,
        "left": left,
        "right": right,
    }
    # The kernel takes the weights as the (KH * KW * C, O) matrix of its implicit im2col.
    operands = (x, w.reshape(kh * kw * c, o), *_per_column(bias, multiplier, shift, o))
    return on_cpu(CONV_TARGET_NAME, out, unfused, *operands, relu=relu, **geometry)


def attention(
    q,
    k_t,
    v,
    mask,
    table,
    multiplier,
    shift,
    out_multiplier=None,
    out_shift=None,
    *,
    causal: bool,
    out_bits: int,
) -> jax.Array:
    """Attention's scores to its context, the opset ops in turn: ``batch_matmul(q, k_t)`` (int32),
    ``requantize`` to int32 (half up, int64 product, saturated), ``softmax(mask, table, causal,
    out_bits)`` and ``batch_matmul`` with ``v`` (int32, wraps); with ``out_multiplier`` and
    ``out_shift``, then ``requantize`` to int8. ``q`` ``(batch, ..., Tq, D)``, ``k_t``
    ``(batch, ..., D, Tk)``, ``v`` ``(batch, ..., Tk, Dv)``, ``mask`` ``(batch, Tk)`` -> int32 (or
    int8) ``(batch, ..., Tq, Dv)``. With int8 q, k_t, v, a per-tensor score rescale and
    ``out_bits <= 30`` on VNNI CPUs: one pass, row by row (``_native/int_attention.cc``)."""
    requantized = out_multiplier is not None

    def unfused(q, k_t, v, mask, table, multiplier, shift, *out_rescale):
        z = lowering.requantize(lowering.batch_matmul(q, k_t), multiplier, shift, out_dtype="int32")
        p = lowering.softmax(z, mask, table, causal=causal, out_bits=out_bits)
        context = lowering.batch_matmul(p, v)
        return lowering.requantize(context, *out_rescale, out_dtype="int8") if out_rescale else context

    out_rescale = _per_column(None, out_multiplier, out_shift, v.shape[-1])[1:] if requantized else ()
    operands = (q, k_t, v, mask, table, multiplier, shift)
    kernel_fits = (
        q.ndim >= 3
        and all(x.dtype == jnp.int8 for x in (q, k_t, v, mask))
        and table.dtype == jnp.int32
        and jnp.shape(multiplier) == ()
        and jnp.shape(shift) == ()
        and out_bits <= 30
    )
    if not kernel_fits:
        return unfused(*operands, *out_rescale)
    lead = q.shape[:-2]
    heads = math.prod(lead[1:])

    def as_4d(x):  # (batch, ..., rows, cols) -> (batch, heads, rows, cols)
        return x.reshape(x.shape[0], heads, *x.shape[-2:])

    out = jax.ShapeDtypeStruct(
        (q.shape[0], heads, q.shape[-2], v.shape[-1]), jnp.int8 if requantized else jnp.int32
    )
    operands = (as_4d(q), as_4d(k_t), as_4d(v), mask, table, multiplier, shift, *out_rescale)
    target = ATTENTION_INT8_TARGET_NAME if requantized else ATTENTION_TARGET_NAME
    context = on_cpu(target, out, unfused, *operands, causal=causal, out_bits=out_bits)
    return context.reshape(*lead, q.shape[-2], v.shape[-1])


def layer_norm_requantized(x, gamma, beta, multiplier, shift, *, eps: int) -> jax.Array:
    """``requantize(layer_norm(x, gamma, beta), multiplier, shift)`` to int8: int32 ``(batch, ..., D)``
    -> int8, per-tensor or per-channel rescale; on VNNI CPUs one kernel pass per row
    (``_native/int_layer_norm.cc``), the int32 rows never stored."""

    def unfused(x, gamma, beta, multiplier, shift):
        y = lowering.layer_norm(x, gamma, beta, eps=eps)
        return lowering.requantize(y, multiplier, shift, out_dtype="int8")

    if not all(a.dtype == jnp.int32 for a in (x, gamma, beta)):
        return unfused(x, gamma, beta, multiplier, shift)
    _, multiplier, shift = _per_column(None, multiplier, shift, x.shape[-1])
    out = jax.ShapeDtypeStruct(x.shape, jnp.int8)
    return on_cpu(LAYER_NORM_INT8_TARGET_NAME, out, unfused, x, gamma, beta, multiplier, shift, eps=eps)


# Above this many elements XLA's own loop for table -> requantize (the two fuse into one pass)
# is faster than the kernel: char-gpt's GELU at 256 x 128 tokens, 2.6 ms vs 4.7 ms.
TABLE_KERNEL_MAX_ELEMENTS = 1 << 16


def table_requantized(x, values, multiplier, shift) -> jax.Array:
    """``requantize(table(x, values), multiplier, shift)`` to int8: int8 ``(batch, ..., N)`` through a
    256-entry int32 table, then the half-up rescale per tensor or per channel; on VNNI CPUs and up
    to ``TABLE_KERNEL_MAX_ELEMENTS`` one kernel pass (``_native/int_table.cc``) that also spares
    small inputs XLA's split of the loop over threads."""

    def unfused(x, values, multiplier, shift):
        return lowering.requantize(lowering.table(x, values), multiplier, shift, out_dtype="int8")

    small = 0 < math.prod(x.shape) <= TABLE_KERNEL_MAX_ELEMENTS
    if x.dtype != jnp.int8 or values.dtype != jnp.int32 or x.ndim == 0 or not small:
        return unfused(x, values, multiplier, shift)
    _, multiplier, shift = _per_column(None, multiplier, shift, x.shape[-1])
    out = jax.ShapeDtypeStruct(x.shape, jnp.int8)
    return on_cpu(TABLE_REQUANTIZE_TARGET_NAME, out, unfused, x, values, multiplier, shift)


def _per_column(bias, multiplier, shift, n: int):
    """Bias (zeros when absent), multiplier and shift as int32 ``(n,)`` vectors."""
    bias = jnp.zeros((n,), jnp.int32) if bias is None else bias
    multiplier = jnp.broadcast_to(jnp.asarray(multiplier, jnp.int32), (n,))
    shift = jnp.broadcast_to(jnp.asarray(shift, jnp.int32), (n,))
    return bias, multiplier, shift
