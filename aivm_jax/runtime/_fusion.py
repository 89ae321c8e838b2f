"""Compiled execution only: chains of ops that run as one fused op.

* `FusedDense`: ``matmul|conv2d -> [bias_add] -> requantize -> [relu]``, or
  ``matmul|conv2d -> bias_add``; saves XLA one pass over the int32 product and
  the int64 rescale per layer.
* `FusedAttention`: ``batch_matmul -> requantize (int32) -> softmax ->
  batch_matmul``, attention's scores to its context; the scores, their rescale
  and the probabilities never leave the cache (four passes over a
  ``(batch, heads, Tq, Tk)`` int32 tensor fewer).
* `Requantized`: a ``layer_norm``, ``table`` or `FusedAttention` followed by
  its requantize to int8, the int32 result never stored (and one XLA loop
  fewer per step, which is most of a small input's time).

A fused op computes the same integers as the ops one by one (it is the
composition of their lowerings wherever the CPU kernel is not used), so
fusing never changes a bit. A chain is fused only when every intermediate
value is read by the next op alone and is not a program output.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

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
from aivm_jax.program import Node, Program

__all__ = [
    "FusedAttention",
    "FusedDense",
    "Requantized",
    "Step",
    "attention",
    "conv_dense",
    "dense",
    "fuse_chains",
    "layer_norm_requantized",
    "run_fused",
    "step_inputs",
    "table_requantized",
]


@dataclasses.dataclass(frozen=True)
class FusedDense:
    """``output = relu?(requantize(bias_add?(head(x, w), bias), multiplier, shift))``; the head is a
    matmul, or a conv2d when ``conv`` holds its attributes (strides, padding). Without a requantize
    (``multiplier`` and ``shift`` None) the chain is ``bias_add(head(x, w), bias)``: the kernel's
    int32 result with multiplier 1 and shift 0, which is the wrapped int32 sum itself."""

    x: str
    w: str
    bias: str | None
    multiplier: str | None
    shift: str | None
    output: str
    out_dtype: str
    relu: bool
    conv: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FusedAttention:
    """``output = batch_matmul(softmax(requantize(batch_matmul(q, k_t), multiplier, shift), mask,
    table), v)``, the requantize to int32 and the softmax with the given ``causal`` and ``out_bits``."""

    q: str
    k_t: str
    v: str
    mask: str
    table: str
    multiplier: str
    shift: str
    output: str
    causal: bool
    out_bits: int


@dataclasses.dataclass(frozen=True)
class Requantized:
    """``output = requantize(inner, multiplier, shift)`` to int8, where ``inner`` is a `FusedAttention`
    or a ``layer_norm`` or ``table`` node whose int32 result nothing else reads."""

    inner: Node | FusedAttention
    multiplier: str
    shift: str
    output: str


Step = Node | FusedDense | FusedAttention | Requantized


def step_inputs(step: Step) -> tuple[str, ...]:
    """The names a step reads."""
    if isinstance(step, Requantized):
        return (*step_inputs(step.inner), step.multiplier, step.shift)
    if isinstance(step, FusedDense):
        return tuple(n for n in (step.x, step.w, step.bias, step.multiplier, step.shift) if n is not None)
    if isinstance(step, FusedAttention):
        return (step.q, step.k_t, step.v, step.mask, step.table, step.multiplier, step.shift)
    return tuple(step.inputs)


def fuse_chains(program: Program) -> list[Step]:
    """The program's nodes in order, with each fusable chain replaced by one fused step."""
    nodes = list(program.nodes)
    readers = Counter(name for node in nodes for name in node.inputs)
    outputs = {spec.name for spec in program.outputs}

    def sole_reader(i: int, op: str) -> Node | None:
        """nodes[i + 1] when it is ``op`` and reads nodes[i]'s output, which nothing else reads."""
        if i + 1 >= len(nodes):
            return None
        produced, following = nodes[i].output, nodes[i + 1]
        if (
            following.op != op
            or produced in outputs
            or readers[produced] != 1
            or following.inputs[0] != produced
        ):
            return None
        return following

    def then_requantized(step: Node | FusedAttention, last: int) -> int:
        """Append ``step`` (its last node is nodes[last]), wrapped in `Requantized` when an int8
        requantize alone reads it; returns the index of the next node."""
        rescale = sole_reader(last, "requantize")
        if rescale is not None and rescale.attrs["out_dtype"] == "int8":
            steps.append(Requantized(step, rescale.inputs[1], rescale.inputs[2], rescale.output))
            return last + 2
        steps.append(step)
        return last + 1

    steps: list[Step] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if node.op in ("layer_norm", "table"):
            i = then_requantized(node, i)
            continue
        if node.op == "batch_matmul":
            rescale = sole_reader(i, "requantize")
            softmax = sole_reader(i + 1, "softmax") if rescale is not None else None
            product = sole_reader(i + 2, "batch_matmul") if softmax is not None else None
            if product is not None and rescale.attrs["out_dtype"] == "int32":
                fused = FusedAttention(
                    q=node.inputs[0],
                    k_t=node.inputs[1],
                    v=product.inputs[1],
                    mask=softmax.inputs[1],
                    table=softmax.inputs[2],
                    multiplier=rescale.inputs[1],
                    shift=rescale.inputs[2],
                    output=product.output,
                    causal=bool(softmax.attrs["causal"]),
                    out_bits=int(softmax.attrs["out_bits"]),
                )
                i = then_requantized(fused, i + 3)
                continue
        j = i
        head = node.op in ("matmul", "conv2d")
        bias = sole_reader(j, "bias_add") if head else None
        if bias is not None:
            j += 1
        rescale = sole_reader(j, "requantize") if head else None
        if rescale is None and bias is None:
            steps.append(node)
            i += 1
            continue
        relu = None
        if rescale is not None:
            j += 1
            relu = sole_reader(j, "relu")
            if relu is not None:
                j += 1
        steps.append(
            FusedDense(
                x=node.inputs[0],
                w=node.inputs[1],
                bias=bias.inputs[1] if bias is not None else None,
                multiplier=rescale.inputs[1] if rescale is not None else None,
                shift=rescale.inputs[2] if rescale is not None else None,
                output=nodes[j].output,
                out_dtype=rescale.attrs["out_dtype"] if rescale is not None else "int32",
                relu=relu is not None,
                conv=dict(node.attrs) if node.op == "conv2d" else None,
            )
        )
        i = j + 1
    return steps


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
    if isinstance(w, np.ndarray) and x.dtype == jnp.int8 and w.dtype == np.int8 and register_kernel():
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


def run_fused(step: FusedDense | FusedAttention | Requantized, values: Mapping[str, Any]) -> jax.Array:
    """Apply one fused step to the named values."""
    if isinstance(step, Requantized):
        inner, rescale = step.inner, (values[step.multiplier], values[step.shift])
        if isinstance(inner, FusedAttention):
            operands = (values[name] for name in step_inputs(inner))
            return attention(*operands, *rescale, causal=inner.causal, out_bits=inner.out_bits)
        operands = [values[name] for name in inner.inputs]
        if inner.op == "layer_norm":
            return layer_norm_requantized(*operands, *rescale, eps=inner.attrs["eps"])
        return table_requantized(*operands, *rescale)
    if isinstance(step, FusedAttention):
        return attention(
            *(values[name] for name in step_inputs(step)),
            causal=step.causal,
            out_bits=step.out_bits,
        )
    bias = values[step.bias] if step.bias is not None else None
    if step.multiplier is None:  # bias_add only: the identity rescale of int32
        multiplier, shift = jnp.int32(1), jnp.int32(0)
    else:
        multiplier, shift = values[step.multiplier], values[step.shift]
    if step.conv is not None:
        return conv_dense(
            values[step.x],
            values[step.w],
            bias,
            multiplier,
            shift,
            strides=tuple(step.conv["strides"]),
            padding=tuple(tuple(p) for p in step.conv["padding"]),
            out_dtype=step.out_dtype,
            relu=step.relu,
        )
    return dense(
        values[step.x],
        values[step.w],
        bias,
        multiplier,
        shift,
        out_dtype=step.out_dtype,
        relu=step.relu,
    )
