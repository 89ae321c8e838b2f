"""The AIVM instruction set (opset version 1).

`reference` holds each op's semantics as plain NumPy, `lowering` its JAX
implementation, and `OPSET` ties them together with their checks; the bounds
that validation enforces (``MAX_*``, ``*_EXACT_*``) are listed, with their
reasons, in ``docs/spec/limits.md``.
"""

from aivm_jax.ops import lowering, reference
from aivm_jax.ops._limits import (
    AVG_POOL_EXACT_WINDOW,
    LAYER_NORM_MAX_AXIS,
    MAX_ATTR_INT,
    MAX_COMPILE_UNITS,
    MAX_NODES,
    MAX_PARAM_ELEMENTS,
    MAX_RANK,
    MAX_ROW_BYTES,
    MAX_TENSOR_ELEMENTS,
    MAX_WINDOW_ELEMENTS,
    MAX_WORK_PER_ROW,
)
from aivm_jax.ops._opset import (
    OPSET,
    OPSET_VERSION,
    NodeCost,
    OpDef,
    TensorType,
    check_node,
    check_tensor,
    node_cost,
)

__all__ = [
    "AVG_POOL_EXACT_WINDOW",
    "LAYER_NORM_MAX_AXIS",
    "MAX_ATTR_INT",
    "MAX_COMPILE_UNITS",
    "MAX_NODES",
    "MAX_PARAM_ELEMENTS",
    "MAX_RANK",
    "MAX_ROW_BYTES",
    "MAX_TENSOR_ELEMENTS",
    "MAX_WINDOW_ELEMENTS",
    "MAX_WORK_PER_ROW",
    "OPSET",
    "OPSET_VERSION",
    "NodeCost",
    "OpDef",
    "TensorType",
    "check_node",
    "check_tensor",
    "lowering",
    "node_cost",
    "reference",
]
