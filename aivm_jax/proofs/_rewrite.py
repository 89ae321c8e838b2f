"""Exact rewrites of a program's node list that make its circuit smaller.

A circuit pays per element for every rounding and comparison (EZKL lays a
``Floor`` out as a base-2^14 decomposition, about 55 rows per element), so the
export first reorders the graph where that provably changes no output bit:

* **pool first**: ``max_pool(relu(requantize(bias_add(x))))`` equals
  ``relu(requantize(bias_add(max_pool(x))))`` when every multiplier is
  non-negative, since each step is a monotone non-decreasing function applied
  per channel (``f(max(a, b)) == max(f(a), f(b))`` for such ``f``). A 2x2 pool
  then requantizes a quarter of the elements.
* **relu into the int8 clip**: ``relu(clip(q, -128, 127)) == clip(q, 0, 127)``;
  the ``requantize`` node gets ``fused_relu=True`` and the ``relu`` node goes.

Only chains whose intermediate values have a single consumer are rewritten, and
every value keeps its name and its bound from `program_bounds` (a max or a
relu never increases a magnitude), so the bounds of the original program still
hold for the rewritten one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aivm_jax.program import Node, Program

__all__ = ["circuit_nodes"]


def _consumers(nodes: list[Node], outputs: set[str]) -> dict[str, int]:
    count: dict[str, int] = {name: 1 for name in outputs}  # a program output is consumed by the caller
    for node in nodes:
        for name in node.inputs:
            count[name] = count.get(name, 0) + 1
    return count


def _pool_first(program: Program, nodes: list[Node]) -> list[Node]:
    """Move each unpadded ``max_pool`` before the monotone per-channel chain feeding it."""
    by_output = {node.output: node for node in nodes}
    consumers = _consumers(nodes, {spec.name for spec in program.outputs})
    for pool in [n for n in nodes if n.op == "max_pool" and n.attrs["padding"] == ((0, 0), (0, 0))]:
        chain: list[Node] = []
        value = pool.inputs[0]
        while value in by_output and consumers.get(value) == 1:
            node = by_output[value]
            if node.op == "requantize" and np.any(program.params[node.inputs[1]] < 0):
                break
            if node.op not in ("relu", "requantize", "bias_add"):
                break
            chain.insert(0, node)
            value = node.inputs[0]
        if not any(node.op == "requantize" for node in chain):
            continue
        pooled = f"{pool.output}.before_{chain[0].output}"
        moved = [dataclasses.replace(pool, inputs=(value,), output=pooled)]
        previous = pooled
        for i, node in enumerate(chain):
            output = pool.output if i == len(chain) - 1 else node.output
            moved.append(dataclasses.replace(node, inputs=(previous, *node.inputs[1:]), output=output))
            previous = output
        start = nodes.index(chain[0])
        rest = [n for n in nodes[start:] if n is not pool and n not in chain]
        nodes = nodes[:start] + moved + rest
        by_output = {node.output: node for node in nodes}
        consumers = _consumers(nodes, {spec.name for spec in program.outputs})
    return nodes


def _fuse_relu(program: Program, nodes: list[Node]) -> list[Node]:
    """Replace ``relu(requantize(..., out_dtype=int8))`` by one requantize that clips to [0, 127]."""
    consumers = _consumers(nodes, {spec.name for spec in program.outputs})
    by_output = {node.output: node for node in nodes}
    fused: dict[str, Node] = {}  # relu output -> the requantize node that now produces it
    for node in nodes:
        source = by_output.get(node.inputs[0]) if node.op == "relu" else None
        if (
            source is not None
            and source.op == "requantize"
            and source.attrs["out_dtype"] == "int8"
            and consumers.get(source.output) == 1
        ):
            fused[source.output] = dataclasses.replace(
                source, output=node.output, attrs={**source.attrs, "fused_relu": True}
            )
    dropped = {node.output for node in fused.values()}
    return [
        fused.get(node.output, node) for node in nodes if not (node.op == "relu" and node.output in dropped)
    ]


def circuit_nodes(program: Program) -> list[Node]:
    """The program's nodes in the order (and fusion) the circuit export lays out; same outputs, bit for bit."""
    return _fuse_relu(program, _pool_first(program, list(program.nodes)))
