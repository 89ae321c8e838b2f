"""The AIVM instruction set (opset version 1).

`reference` holds each op's semantics as plain NumPy, `lowering` its JAX
implementation, and `OPSET` ties them together with their checks.
"""

from aivm_jax.ops import lowering, reference
from aivm_jax.ops._opset import OPSET, OPSET_VERSION, OpDef, TensorType, check_node

__all__ = ["OPSET", "OPSET_VERSION", "OpDef", "TensorType", "check_node", "lowering", "reference"]
