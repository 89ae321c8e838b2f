"""Import ONNX graphs (opsets 13-20, as PyTorch exports them) as int8 AIVM programs.

`import_onnx` reads a model and calibration data and returns a `Program`
with its input/output scales and a fidelity report. One converter per ONNX op
type lives in a table keyed by op type and opset range (`converters`); ops
without one are all reported by `UnsupportedOnnxError` before any work.
The ``onnx`` package (the ``proofs`` extra) is needed only when importing.
"""

from aivm_jax.quant.onnx import _ops, _ops_transformer  # noqa: F401  (register the converters)
from aivm_jax.quant.onnx._errors import OnnxImportError, UnsupportedOnnxError
from aivm_jax.quant.onnx._import import OUTPUT_INT32_BITS, import_onnx, load_calibration
from aivm_jax.quant.onnx._registry import FOLDABLE, converters

__all__ = [
    "FOLDABLE",
    "OUTPUT_INT32_BITS",
    "OnnxImportError",
    "UnsupportedOnnxError",
    "converters",
    "import_onnx",
    "load_calibration",
]
