"""Compiled execution only: which chains of a program's ops run as one fused op (the fused
computations themselves are `aivm_jax.ops._fused`).

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
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from aivm_jax.ops._fused import attention, conv_dense, dense, layer_norm_requantized, table_requantized
from aivm_jax.program import Node, Program

__all__ = ["FusedAttention", "FusedDense", "Requantized", "Step", "fuse_chains", "run_fused", "step_inputs"]


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
