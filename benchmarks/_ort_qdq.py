"""The onnxruntime QDQ int8 peer every end-to-end benchmark here compares with."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def qdq_session(
    write_float_onnx: Callable[[Path], None],
    calibration: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str] | None = None,
):
    """onnxruntime session of a float model after `quantize_static`: QDQ, int8 per-channel
    weights and int8 activations, calibrated on ``calibration`` (one feed dict per call).

    ``write_float_onnx(path)`` writes the float model there; ``op_types`` limits which op
    kinds are quantized (default: every kind onnxruntime quantizes). None where
    onnxruntime is not installed (the optional ``bench`` extra).
    """
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as work:
        write_float_onnx(Path(work) / "float.onnx")
        quantize_static(
            f"{work}/float.onnx",
            f"{work}/qdq.onnx",
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        return ort.InferenceSession(f"{work}/qdq.onnx", providers=["CPUExecutionProvider"])


def export_torch(module, example: tuple, path: Path, input_names: Sequence[str], output_name: str) -> None:
    """``module`` to ONNX with torch's TorchScript exporter; every input's axes 0 and 1 variable."""
    import torch

    axes = {name: {0: "batch", 1: "tokens"} for name in input_names}
    torch.onnx.export(
        module, example, str(path), input_names=list(input_names), output_names=[output_name],
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
