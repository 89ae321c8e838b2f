"""Compiled execution only: ``matmul|conv2d -> [bias_add] -> requantize -> [relu]`` chains run as one fused op.

The fused op computes the same integers as the ops one by one (it is the
composition of their lowerings wherever the VNNI kernel is not used), so
fusing never changes a bit; it saves XLA one pass over the int32 product and
the int64 rescale per layer. A chain is fused only when every intermediate
value is read by the next op alone and is not a program output.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from aivm_jax.ops import lowering
from aivm_jax.ops._vnni import CONV_TARGET_NAME, DENSE_TARGET_NAME, on_cpu
from aivm_jax.program import Node, Program

__all__ = ["FusedDense", "conv_dense", "dense", "fuse_dense_chains", "run_fused"]


@dataclasses.dataclass(frozen=True)
class FusedDense:
    """``output = relu?(requantize(bias_add?(head(x, w), bias), multiplier, shift))``; the head is a
    matmul, or a conv2d when ``conv`` holds its attributes (strides, padding)."""

    x: str
    w: str
    bias: str | None
    multiplier: str
    shift: str
    output: str
    out_dtype: str
    relu: bool
    conv: Mapping[str, Any] | None = None


def fuse_dense_chains(program: Program) -> list[Node | FusedDense]:
    """The program's nodes in order, with each fusable dense chain replaced by one `FusedDense`."""
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

    steps: list[Node | FusedDense] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        j = i
        head = node.op in ("matmul", "conv2d")
        bias = sole_reader(j, "bias_add") if head else None
        if bias is not None:
            j += 1
        rescale = sole_reader(j, "requantize") if head else None
        if rescale is None:
            steps.append(node)
            i += 1
            continue
        j += 1
        relu = sole_reader(j, "relu")
        if relu is not None:
            j += 1
        steps.append(
            FusedDense(
                x=node.inputs[0],
                w=node.inputs[1],
                bias=bias.inputs[1] if bias is not None else None,
                multiplier=rescale.inputs[1],
                shift=rescale.inputs[2],
                output=nodes[j].output,
                out_dtype=rescale.attrs["out_dtype"],
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


def _per_column(bias, multiplier, shift, n: int):
    """Bias (zeros when absent), multiplier and shift as int32 ``(n,)`` vectors."""
    bias = jnp.zeros((n,), jnp.int32) if bias is None else bias
    multiplier = jnp.broadcast_to(jnp.asarray(multiplier, jnp.int32), (n,))
    shift = jnp.broadcast_to(jnp.asarray(shift, jnp.int32), (n,))
    return bias, multiplier, shift


def run_fused(step: FusedDense, values: Mapping[str, Any]) -> jax.Array:
    """Apply one `FusedDense` step to the named values."""
    bias = values[step.bias] if step.bias is not None else None
    if step.conv is not None:
        return conv_dense(
            values[step.x],
            values[step.w],
            bias,
            values[step.multiplier],
            values[step.shift],
            strides=tuple(step.conv["strides"]),
            padding=tuple(tuple(p) for p in step.conv["padding"]),
            out_dtype=step.out_dtype,
            relu=step.relu,
        )
    return dense(
        values[step.x],
        values[step.w],
        bias,
        values[step.multiplier],
        values[step.shift],
        out_dtype=step.out_dtype,
        relu=step.relu,
    )
