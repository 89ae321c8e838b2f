"""Patterns: subgraphs converted as one unit. Each names what it replaces and checks every node it consumes."""

from __future__ import annotations

from aivm_jax.quant.onnx._context import Context
from aivm_jax.quant.onnx._ops import _bn_affine

__all__ = ["fold_batch_norms"]

_FOLDS_INTO = {"Conv", "Gemm", "MatMul"}


def fold_batch_norms(ctx: Context) -> None:
    """``Conv|Gemm|MatMul -> BatchNormalization`` becomes one layer with the affine map in its weights.

    Applies only when the layer's output feeds the ``BatchNormalization`` alone
    (and is no graph output), the layer's weight is a constant, and the
    normalization is in inference mode with constant statistics (its check
    passed). The normalization then binds its output to the layer's.
    """
    graph = ctx.graph
    producers, consumers = graph.producer_of(), graph.consumers()
    for node in graph.nodes:
        if node.op_type != "BatchNormalization":
            continue
        x = node.inputs[0]
        layer = producers.get(x)
        if (
            layer is None
            or layer.op_type not in _FOLDS_INTO
            or len(consumers.get(x, [])) != 1
            or x in graph.outputs
            or layer.name in ctx.fused
            or graph.const(layer.inputs[1]) is None
        ):
            continue
        ctx.fused[layer.name] = _bn_affine(graph, node)
        ctx.absorbed.add(node.name)
        ctx.patterns.append(
            {"pattern": f"{layer.op_type}+BatchNormalization", "nodes": [layer.name, node.name]}
        )
