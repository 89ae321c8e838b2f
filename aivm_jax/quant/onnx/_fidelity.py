"""The importer's fidelity report: the float ONNX model vs the integer program on held-out rows.

The float model runs in onnxruntime when it is installed, else in
``onnx.reference``; both are off the inference path. The report holds
integers only (program metadata holds no floats): cosines in parts per
million, errors in millionths of the output's real unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["compare_outputs", "run_float"]


def run_float(model, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """The float model's outputs by name, and which engine computed them.

    A model exported with a fixed batch size (no dynamic batch axis) runs that many rows at a
    time, the last chunk padded with copies of its first row."""
    from onnx import helper

    types = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in model.graph.input}
    feeds = {k: np.asarray(v).astype(types.get(k, np.float32)) for k, v in feeds.items()}
    fixed = {
        v.type.tensor_type.shape.dim[0].dim_value
        for v in model.graph.input
        if v.name in feeds and v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_value > 0
    }
    rows = next(iter(feeds.values())).shape[0]
    chunk = min(fixed) if len(fixed) == 1 else rows
    names = [o.name for o in model.graph.output]

    def chunked(run) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, rows, chunk):
            part = {k: v[start : start + chunk] for k, v in feeds.items()}
            short = chunk - next(iter(part.values())).shape[0]
            if short:
                part = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in part.items()}
            parts.append([np.asarray(o)[: chunk - short] for o in run(names, part)])
        return {n: np.concatenate([p[i] for p in parts]).astype(np.float64) for i, n in enumerate(names)}

    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return chunked(session.run), f"onnxruntime {onnxruntime.__version__}"
    except Exception:  # not installed, or a model it does not load (a newer IR version, say)
        import onnx
        from onnx.reference import ReferenceEvaluator

        return chunked(ReferenceEvaluator(model).run), f"onnx.reference {onnx.__version__}"


def compare_outputs(float_out: np.ndarray, real_out: np.ndarray) -> dict[str, Any]:
    """Per-row cosine (mean and minimum, ppm), largest absolute error (1e-6 units), argmax agreement."""
    f = float_out.reshape(float_out.shape[0], -1)
    q = real_out.reshape(real_out.shape[0], -1)
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1)
    cosine = np.where(norms > 0, (f * q).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    report = {
        "cosine_mean_ppm": round(float(cosine.mean()) * 1e6),
        "cosine_min_ppm": round(float(cosine.min()) * 1e6),
        "max_abs_error_e6": round(float(np.abs(f - q).max()) * 1e6),
        "float_max_abs_e6": round(float(np.abs(f).max()) * 1e6),
    }
    if float_out.ndim >= 2 and float_out.shape[-1] > 1:
        agree = np.argmax(float_out, axis=-1) == np.argmax(real_out, axis=-1)
        report["argmax_agreement"] = int(agree.sum())
        report["argmax_positions"] = int(agree.size)
    return report
