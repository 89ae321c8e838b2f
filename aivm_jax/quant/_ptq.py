"""Post-training quantization of a sequential float model into an AIVM program.

A model is described by a list of layers (`Dense`, `Conv`, `MaxPool`,
`AvgPool`, `Flatten`). The same description builds the Flax module that is
trained (see `aivm_jax.models`) and drives the conversion here, so the two
cannot disagree on structure. Calibration runs the float model in NumPy on
calibration data, records each layer output's largest magnitude, and picks
per-tensor activation scales ``max|y| / 127``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.quant._numerics import quantize_bias, quantize_multiplier, quantize_weights

__all__ = ["AvgPool", "Conv", "Dense", "Flatten", "Layer", "MaxPool", "float_forward", "quantize"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dense:
    """Fully connected layer ``y = x @ kernel + bias`` (Flax ``nn.Dense``), optional ReLU."""

    features: int
    relu: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conv:
    """NHWC convolution (Flax ``nn.Conv``) with explicit zero padding, optional ReLU."""

    features: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
    relu: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaxPool:
    window: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AvgPool:
    window: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Flatten:
    pass


Layer = Dense | Conv | MaxPool | AvgPool | Flatten
_NO_PAD = ((0, 0), (0, 0))


def _params_of(params: Mapping[str, Any], index: int) -> tuple[np.ndarray, np.ndarray]:
    layer = params[f"layer_{index}"]
    return np.asarray(layer["kernel"], np.float64), np.asarray(layer["bias"], np.float64)


def _pool(x: np.ndarray, window, strides, reduce) -> np.ndarray:
    kh, kw = window
    sh, sw = strides
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    out = np.empty((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = reduce(x[:, i * sh : i * sh + kh, j * sw : j * sw + kw], axis=(1, 2))
    return out


def float_forward(layers: Sequence[Layer], params: Mapping[str, Any], x: np.ndarray, *, trace: bool = False):
    """The float model in NumPy float64: its output, or every layer's output if ``trace``."""
    outs = []
    for index, layer in enumerate(layers):
        if isinstance(layer, Dense):
            kernel, bias = _params_of(params, index)
            x = x @ kernel + bias
        elif isinstance(layer, Conv):
            kernel, bias = _params_of(params, index)
            (t, b), (left, r) = layer.padding
            xp = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
            kh, kw = layer.kernel
            sh, sw = layer.strides
            ho = (xp.shape[1] - kh) // sh + 1
            wo = (xp.shape[2] - kw) // sw + 1
            y = np.zeros((x.shape[0], ho, wo, layer.features))
            for p in range(kh):
                for q in range(kw):
                    patch = xp[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw]
                    y += patch @ kernel[p, q]
            x = y + bias
        elif isinstance(layer, MaxPool):
            x = _pool(x, layer.window, layer.strides, np.max)
        elif isinstance(layer, AvgPool):
            x = _pool(x, layer.window, layer.strides, np.mean)
        elif isinstance(layer, Flatten):
            x = x.reshape(x.shape[0], -1)
        if getattr(layer, "relu", False):
            x = np.maximum(x, 0.0)
        outs.append(x)
    return outs if trace else x


def quantize(
    layers: Sequence[Layer],
    params: Mapping[str, Any],
    *,
    name: str,
    input_shape: Sequence[int],
    input_scale: float,
    calibration: np.ndarray,
    metadata: Mapping[str, Any] | None = None,
) -> Program:
    """Calibrate a sequential float model and convert it into an int8 AIVM program.

    Args:
      layers: the model's layer list; ``params["layer_{i}"]`` holds the
        ``kernel`` and ``bias`` of layer ``i`` (Flax naming).
      name: the program's name.
      input_shape: shape of one example, without the batch axis.
      input_scale: real value of one step of the int8 input (``x_float = scale * x_int``).
      calibration: float inputs (already divided into real units), shape ``(n, *input_shape)``.
      metadata: extra JSON (no floats) stored in the program.

    Returns:
      A `Program` with input ``x`` (int8) and output ``y`` (int8, the last
      layer's output at its calibrated scale, recorded in ``metadata["output_scale_ppb"]``
      as parts per billion).
    """
    traces = float_forward(layers, params, np.asarray(calibration, np.float64), trace=True)
    nodes: list[Node] = []
    tensors: dict[str, np.ndarray] = {}
    current, scale = "x", float(input_scale)
    for index, (layer, calibrated) in enumerate(zip(layers, traces)):
        tag = f"l{index}"
        out = "y" if index == len(layers) - 1 else f"{tag}.out"
        if isinstance(layer, (Dense, Conv)):
            kernel, bias = _params_of(params, index)
            q_kernel, w_scales = quantize_weights(kernel)
            out_scale = max(float(np.abs(calibrated).max()), 1e-8) / 127.0
            pairs = [quantize_multiplier(scale * s / out_scale) for s in w_scales]
            tensors[f"{tag}.kernel"] = q_kernel
            tensors[f"{tag}.bias"] = quantize_bias(bias, scale * w_scales)
            tensors[f"{tag}.multiplier"] = np.array([m for m, _ in pairs], np.int32)
            tensors[f"{tag}.shift"] = np.array([s for _, s in pairs], np.int32)
            if isinstance(layer, Dense):
                nodes.append(Node(op="matmul", inputs=(current, f"{tag}.kernel"), output=f"{tag}.acc"))
            else:
                attrs = {"strides": layer.strides, "padding": layer.padding}
                nodes.append(
                    Node(op="conv2d", inputs=(current, f"{tag}.kernel"), output=f"{tag}.acc", attrs=attrs)
                )
            nodes.append(Node(op="bias_add", inputs=(f"{tag}.acc", f"{tag}.bias"), output=f"{tag}.sum"))
            requant_out = f"{tag}.pre" if layer.relu else out
            nodes.append(
                Node(
                    op="requantize",
                    inputs=(f"{tag}.sum", f"{tag}.multiplier", f"{tag}.shift"),
                    output=requant_out,
                    attrs={"out_dtype": "int8"},
                )
            )
            if layer.relu:
                nodes.append(Node(op="relu", inputs=(requant_out,), output=out))
            scale = out_scale
        elif isinstance(layer, (MaxPool, AvgPool)):
            op = "max_pool" if isinstance(layer, MaxPool) else "avg_pool"
            attrs = {"window": layer.window, "strides": layer.strides, "padding": _NO_PAD}
            nodes.append(Node(op=op, inputs=(current,), output=out, attrs=attrs))
        elif isinstance(layer, Flatten):
            nodes.append(Node(op="flatten", inputs=(current,), output=out))
        current = out
    return Program(
        name=name,
        inputs=(ValueSpec(name="x", dtype="int8", shape=tuple(input_shape)),),
        outputs=(ValueSpec(name="y", dtype="int8", shape=tuple(traces[-1].shape[1:])),),
        nodes=tuple(nodes),
        params=tensors,
        metadata={
            **(metadata or {}),
            "input_scale_ppb": round(input_scale * 1e9),
            "output_scale_ppb": round(scale * 1e9),
        },
    )
