"""Quantization: float models into AIVM programs (host side; floats stay here).

`quantize` calibrates a sequential float model into an int8 program;
`quantize_multiplier`, `quantize_weights` and `quantize_bias` are its numerics;
`classification_fidelity` measures float vs integer on held-out data;
`int8_matmul` is the exact int8 GEMM the opset's matmuls run on;
`import_onnx` imports an ONNX graph with calibration data (`aivm_jax.quant.onnx`).
"""

from aivm_jax.ops._gemm import int8_matmul
from aivm_jax.quant._fidelity import classification_fidelity, describe_fidelity
from aivm_jax.quant._numerics import quantize_bias, quantize_multiplier, quantize_weights
from aivm_jax.quant._ptq import AvgPool, Conv, Dense, Flatten, Layer, MaxPool, float_forward, quantize
from aivm_jax.quant.onnx import OnnxImportError, UnsupportedOnnxError, import_onnx

__all__ = [
    "AvgPool",
    "Conv",
    "Dense",
    "Flatten",
    "Layer",
    "MaxPool",
    "OnnxImportError",
    "UnsupportedOnnxError",
    "classification_fidelity",
    "describe_fidelity",
    "float_forward",
    "import_onnx",
    "int8_matmul",
    "quantize",
    "quantize_bias",
    "quantize_multiplier",
    "quantize_weights",
]
