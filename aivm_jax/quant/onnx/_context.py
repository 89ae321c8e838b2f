"""The conversion context: where each ONNX value lives in the program being built.

Every ONNX activation maps to a `Val`: the name of an int8 or int32 program
value, whose real scale the `GraphBuilder` records, and its layout. Rank-4
ONNX tensors are NCHW; the opset's convolutions and pools are NHWC, so a
rank-4 value may be held channels-last (``channels_last=True``) and is
transposed back only where an op needs the ONNX order (``Flatten``,
``Reshape``, a graph output).

Invariants: a value has one scale for the whole tensor or one per channel of
its last axis (an accumulator, or an int8 value that a layer reads with the
scales folded into its weights). Consumers that need int8 call
`Context.int8`, which requantizes once, with the scale its calibration range
asks for (the positive range alone ahead of a ``Relu``), and caches it; a
consumer that folds its input's scales into its weights (a convolution, a
linear layer) may ask for one scale per channel, so that a channel whose
range is far below the others' keeps its resolution.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from aivm_jax.quant._graph import GraphBuilder
from aivm_jax.quant.onnx._errors import OnnxImportError
from aivm_jax.quant.onnx._graph import OnnxGraph, OnnxNode

__all__ = ["PER_CHANNEL_FLOOR", "PER_CHANNEL_HEADROOM", "WIDEN_BITS", "Context", "Val", "sanitize"]

WIDEN_BITS = 16
"""`Context.widen` multiplies an int8 value by ``2**16``: exact, and far from int32's limits."""

PER_CHANNEL_FLOOR = 2.0**-8
"""A channel's int8 scale is at least this fraction of its tensor's: a channel (nearly) dead in
calibration keeps 8 more bits than the per-tensor scale would give it, and no rescale factor or
folded weight explodes."""

PER_CHANNEL_HEADROOM = 1.25
"""A per-channel int8 scale maps 1.25 times its channel's calibration maximum to 127 (never more
than the tensor's maximum, the per-tensor scale): a channel's maximum over the calibration rows
is a tight sample, and inputs past it would saturate."""

_BAD = re.compile(r"[^A-Za-z0-9_.:/-]")


def sanitize(name: str) -> str:
    """An ONNX value name as a program name (letters, digits and ``_.:/-``, not starting with a digit)."""
    clean = _BAD.sub("_", name.strip("/")) or "v"
    return clean if re.match(r"[A-Za-z_]", clean) else f"v{clean}"


@dataclasses.dataclass(frozen=True)
class Val:
    """A program value standing for an ONNX activation."""

    name: str
    channels_last: bool = False


class Context:
    """State of one conversion: the builder, the ONNX graph, and each ONNX value's `Val`.

    Attributes:
      fused: node name -> ``(a, c)``: a per-channel affine map ``y = a * x + c``
        (a folded ``BatchNormalization``) the node applies to its output.
      absorbed: names of nodes whose work another node already did.
      patterns: the subgraphs replaced, for the program's provenance.
      probabilities: program values holding softmax probabilities (int32, at most
        ``2**15``): a product may read them as they are.
      shared: program names of values and parameters built once per program
        (the softmax table, the all-ones key mask of each length).
    """

    def __init__(self, graph: OnnxGraph, builder: GraphBuilder, reserved: set[str]) -> None:
        self.graph = graph
        self.builder = builder
        self.values: dict[str, Val] = {}
        self.fused: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.absorbed: set[str] = set()
        self.patterns: list[dict[str, Any]] = []
        self.probabilities: set[str] = set()
        self.shared: dict[Any, str] = {}
        self._taken = set(reserved)
        self._int8_cache: dict[tuple[str, bool, float | None, bool], Val] = {}
        self._consumers: dict[str, list[OnnxNode]] | None = None

    # ------------------------------------------------------------------ names and values

    def fresh(self, base: str) -> str:
        """A program name not used yet, derived from ``base``."""
        name, k = sanitize(base), 1
        while name in self._taken or name in self.builder.params:
            name, k = f"{sanitize(base)}.{k}", k + 1
        self._taken.add(name)
        return name

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.const(name)

    def readers(self, name: str) -> list[OnnxNode]:
        """The nodes that read the ONNX value ``name``."""
        if self._consumers is None:
            self._consumers = self.graph.consumers()
        return self._consumers.get(name, [])

    def val(self, name: str) -> Val:
        if name not in self.values:
            raise OnnxImportError(f"value {name!r} is used before it is computed, or is not an activation")
        return self.values[name]

    def bind(self, onnx_name: str, val: Val) -> None:
        self.values[onnx_name] = val

    def dtype(self, val: Val) -> str:
        return str(self.builder.values[val.name].dtype)

    def shape(self, val: Val) -> tuple[int, ...]:
        """The value's ONNX row shape (no batch axis; NCHW order for a channels-last value)."""
        shape = tuple(self.builder.values[val.name].shape[1:])
        return (shape[2], shape[0], shape[1]) if val.channels_last else shape

    def per_tensor(self, val: Val) -> bool:
        return np.ndim(self.builder.scales[val.name]) == 0

    # ------------------------------------------------------------------ conversions

    def int8(
        self, val: Val, *, positive: bool = False, cap: float | None = None, per_channel: bool = False
    ) -> Val:
        """``val`` as an int8 value: one scale, or with ``per_channel`` possibly one per channel.

        An accumulator is requantized so that its calibration maximum (of the
        positive part only when ``positive``; at most ``cap`` when given) maps to
        127. With ``per_channel``, an int8 value is returned as it is and an
        accumulator whose last axis is its channel axis (rank 2 or 3, or rank 4
        channels-last) gets one scale per channel: each channel's own maximum, at
        least `PER_CHANNEL_FLOOR` of the tensor's, maps to 127.
        """
        if self.dtype(val) == "int8" and (per_channel or self.per_tensor(val)):
            return val
        if self.dtype(val) == "int8":  # one scale per channel: requantize reads int32
            val = self.widen(val)
        rank = len(self.builder.values[val.name].shape)
        per_channel = per_channel and (val.channels_last or rank != 4) and rank >= 2
        key = (val.name, positive, cap, per_channel)
        if key not in self._int8_cache:
            real = self.builder.real(val.name)
            real = real.reshape(-1, real.shape[-1]) if per_channel else real.reshape(-1, 1)
            top = real.max(axis=0) if positive else np.abs(real).max(axis=0)
            if cap is not None:
                top = np.minimum(top, cap)
            top = np.maximum(top, max(float(top.max()) * PER_CHANNEL_FLOOR, 1e-8))
            if per_channel:  # headroom: a channel's calibration maximum is a tight sample of its range
                top = np.minimum(top * PER_CHANNEL_HEADROOM, float(top.max()))
            scale = top / 127.0 if per_channel else float(top[0]) / 127.0
            out = self.builder.requantize(val.name, self.fresh(f"{val.name}.q8"), scale=scale)
            self._int8_cache[key] = Val(out, val.channels_last)
        return self._int8_cache[key]

    def widen(self, val: Val) -> Val:
        """An int8 value as int32 at a ``2**16`` times finer scale (``x * 2**16``, exact): one
        ``add`` with a zero second multiplier."""
        builder = self.builder
        name = self.fresh(f"{val.name}.i32")
        params = [
            builder.param(f"{name}.a_multiplier", np.int32(2**WIDEN_BITS)),
            builder.param(f"{name}.b_multiplier", np.int32(0)),
            builder.param(f"{name}.shift", np.int32(0)),
        ]
        scale = np.asarray(builder.scales[val.name], np.float64) / 2**WIDEN_BITS
        scale = float(scale) if scale.ndim == 0 else scale
        builder.op("add", [val.name, val.name, *params], name, scale, out_dtype="int32")
        return Val(name, val.channels_last)

    def layout(self, val: Val, channels_last: bool) -> Val:
        """``val`` (rank 4) channels-last or in ONNX order; a transpose when it is not already."""
        if val.channels_last == channels_last:
            return val
        val = self.int8(val)  # a per-channel scale would not survive the transpose
        perm = (1, 2, 0) if channels_last else (2, 0, 1)
        out = self.fresh(f"{val.name}.{'nhwc' if channels_last else 'nchw'}")
        self.builder.op("transpose", [val.name], out, self.builder.scales[val.name], perm=perm)
        return Val(out, channels_last)

    def onnx_order(self, val: Val) -> Val:
        """``val`` with its axes in ONNX order."""
        return self.layout(val, False) if val.channels_last else val

    def nhwc(self, val: Val) -> Val:
        """A rank-4 ``val`` channels-last (as the opset's conv and pools want it)."""
        if len(self.builder.values[val.name].shape) != 4:
            raise OnnxImportError(f"value {val.name!r} is not rank 4 (batch, C, H, W)")
        return self.layout(val, True)

    def node_input(self, node: OnnxNode, index: int = 0) -> Val:
        return self.val(node.inputs[index])
