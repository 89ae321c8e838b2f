"""Build an integer program from float weights while calibrating it on real data.

`GraphBuilder` appends opset nodes one at a time and runs each on a
calibration batch right away (with the JAX lowering, which equals the
reference bit for bit). Every value carries its real scale (a float, or one
float per channel of the last axis), so the next node's scale is chosen from
the integer values the program itself computes, quantization error included.
Floats live only here, off the inference path; the program holds integers.

Rounding of every host-side conversion: ``np.round`` (half to even) on
weights and biases; multipliers via `quantize_multiplier`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.ops import OPSET
from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.quant._numerics import quantize_bias, quantize_multiplier, quantize_weights

__all__ = ["GraphBuilder", "exp2_table", "gelu"]

Scale = Any  # float, or np.ndarray of shape (N,) for per-channel scales

SOFTMAX_TABLE_BITS = 8
"""Softmax scores are held in units of 2**-8 bits: a 256-entry table of 2**(-f/256)."""

SOFTMAX_OUT_BITS = 15
"""Attention probabilities carry 15 fractional bits (1.0 is 32768)."""

_ADD_MULTIPLIER_LIMIT = 2**30


def exp2_table(bits: int = SOFTMAX_TABLE_BITS) -> np.ndarray:
    """``round(2**30 * 2**(-f / 2**bits))`` for ``f`` in ``0 .. 2**bits - 1`` (int32)."""
    return np.round(2.0**30 * 2.0 ** (-np.arange(2**bits) / 2**bits)).astype(np.int32)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU in float64, ``0.5 x (1 + erf(x / sqrt 2))``; tables are built from it."""
    from scipy.special import erf  # scipy comes with scikit-learn

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


GELU_FLOOR = 4.0
"""GELU is ~0 below -4, so its int8 input only needs to reach -4 on the negative side."""


def _per_channel(scale: Scale, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,)).copy()


class GraphBuilder:
    """Accumulates nodes and parameters; evaluates each node on the calibration feeds.

    Args:
      name: the program's name.
      inputs: its input specs.
      feeds: a calibration batch, input name -> array (batch axis first).
      input_scales: real scale of each input (ignored for ids and masks).
    """

    def __init__(
        self,
        name: str,
        inputs: tuple[ValueSpec, ...],
        feeds: Mapping[str, np.ndarray],
        input_scales: Mapping[str, Scale] | None = None,
    ) -> None:
        self.name = name
        self.inputs = inputs
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.values: dict[str, Any] = {k: jax.numpy.asarray(v) for k, v in feeds.items()}
        self.scales: dict[str, Scale] = dict(input_scales or {})

    # ------------------------------------------------------------------ basics

    def param(self, name: str, array: np.ndarray) -> str:
        if name in self.params:
            raise ProgramError(f"parameter {name!r} defined twice")
        self.params[name] = np.asarray(array)
        return name

    def op(self, op: str, inputs: list[str], output: str, scale: Scale = None, **attrs: Any) -> str:
        """Append ``output = op(*inputs, **attrs)`` and compute it on the calibration batch."""
        self.nodes.append(Node(op=op, inputs=tuple(inputs), output=output, attrs=attrs))
        operands = [self.values[n] if n in self.values else jax.numpy.asarray(self.params[n]) for n in inputs]
        self.values[output] = OPSET[op].lowering(*operands, **attrs)
        if scale is not None:
            self.scales[output] = scale
        return output

    def value(self, name: str) -> np.ndarray:
        return np.asarray(self.values[name])

    def real(self, name: str) -> np.ndarray:
        """The calibration value of ``name`` in real units (float64)."""
        return self.value(name).astype(np.float64) * np.asarray(self.scales[name], dtype=np.float64)

    def program(self, outputs: tuple[ValueSpec, ...], metadata: Mapping[str, Any]) -> Program:
        return Program(
            name=self.name,
            inputs=self.inputs,
            outputs=outputs,
            nodes=tuple(self.nodes),
            params=self.params,
            metadata=dict(metadata),
        )

    def embedding_table(self, name: str, table: np.ndarray) -> str:
        """Store a float ``(V, D)`` table as int8 with one scale per column; return its name."""
        q, scales = quantize_weights(np.asarray(table))
        self.param(name, q)
        self.scales[name] = scales
        return name

    # ------------------------------------------------------------------ layers

    def requantize(
        self,
        x: str,
        output: str,
        *,
        out_dtype: str = "int8",
        scale: Scale | None = None,
        keep: np.ndarray | None = None,
    ) -> str:
        """Rescale ``x`` to ``scale`` (per tensor, or one per channel of the last axis).

        By default the calibration maximum maps to 127; ``keep`` (a boolean mask
        broadcastable to ``x``) limits the calibration to real tokens.
        """
        if scale is None:
            real = np.abs(self.real(x))
            if keep is not None:
                real = np.where(keep, real, 0.0)
            scale = max(float(real.max()), 1e-8) / 127.0
        n = self.value(x).shape[-1]
        factors = _per_channel(self.scales[x], n) / scale
        pairs = [quantize_multiplier(f) for f in factors]
        if all(p == pairs[0] for p in pairs):
            m, s = np.int32(pairs[0][0]), np.int32(pairs[0][1])
        else:
            m = np.array([p[0] for p in pairs], np.int32)
            s = np.array([p[1] for p in pairs], np.int32)
        names = [self.param(f"{output}.multiplier", m), self.param(f"{output}.shift", s)]
        return self.op("requantize", [x, *names], output, scale, out_dtype=out_dtype)

    def smoothed_input(self, x: str, weights: list[np.ndarray], output: str, *, keep, alpha: float) -> str:
        """int8 copy of ``x`` with one scale per channel, for the matmuls with ``weights``.

        SmoothQuant's balance: channel ``k`` is divided by ``a_k**alpha /
        w_k**(1 - alpha)`` (``a_k`` the calibration max of the activation,
        ``w_k`` of the weight row), and `linear` multiplies the weight row back,
        so outlier channels no longer set the step of every other channel.
        """
        real = np.abs(self.real(x))
        if keep is not None:
            real = np.where(keep, real, 0.0)
        a = np.maximum(real.reshape(-1, real.shape[-1]).max(axis=0), 1e-8)
        w = np.maximum(np.concatenate([np.abs(wt) for wt in weights], axis=1).max(axis=1), 1e-8)
        smooth = a**alpha / w ** (1.0 - alpha)
        step = (a / smooth).max() / 127.0
        return self.requantize(x, output, scale=smooth * step)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, output: str) -> str:
        """``x @ weight + bias`` with per-output-channel int8 weights; int32 out.

        A per-channel input scale is folded into the weight rows before they
        are quantized.

        Args:
          x: an int8 value; weight: float ``(K, N)``; bias: float ``(N,)``.
        """
        in_scale = np.asarray(self.scales[x], dtype=np.float64)
        if in_scale.ndim:
            q, w_scales = quantize_weights(np.asarray(weight, np.float64) * in_scale[:, None])
            acc_scale = w_scales
        else:
            q, w_scales = quantize_weights(weight)
            acc_scale = w_scales * float(in_scale)
        self.param(f"{output}.weight", q)
        self.param(f"{output}.bias", quantize_bias(bias, acc_scale))
        acc = self.op("matmul", [x, f"{output}.weight"], f"{output}.acc", acc_scale)
        return self.op("bias_add", [acc, f"{output}.bias"], output, acc_scale)

    def add(
        self, a: str, b: str, output: str, *, scale: float | None = None, keep=None, headroom_bits: int = 22
    ) -> str:
        """``a + b`` as int32 at ``scale`` (real units): one rounding, per-channel multipliers.

        By default the calibration maximum of ``|a + b|`` maps to ``2**headroom_bits``.
        """
        if scale is None:
            total = np.abs(self.real(a) + self.real(b))
            if keep is not None:
                total = np.where(keep, total, 0.0)
            scale = max(float(total.max()), 1e-8) / 2.0**headroom_bits
        n = self.value(a).shape[-1]
        ra = _per_channel(self.scales[a], n) / scale
        rb = _per_channel(self.scales[b], n) / scale
        largest = np.maximum(np.abs(ra), np.abs(rb))
        shift = np.clip(np.floor(np.log2((_ADD_MULTIPLIER_LIMIT - 1) / largest)), 0, 62).astype(np.int32)
        ma = np.round(ra * 2.0**shift)
        mb = np.round(rb * 2.0**shift)
        if np.abs(ma).max() > _ADD_MULTIPLIER_LIMIT or np.abs(mb).max() > _ADD_MULTIPLIER_LIMIT:
            raise ProgramError(f"{output}: rescale factors too large for an add; pick a coarser scale")
        names = [
            self.param(f"{output}.a_multiplier", ma.astype(np.int32)),
            self.param(f"{output}.b_multiplier", mb.astype(np.int32)),
            self.param(f"{output}.shift", shift),
        ]
        return self.op("add", [a, b, *names], output, scale, out_dtype="int32")

    def layer_norm(
        self,
        x: str,
        gamma: np.ndarray,
        beta: np.ndarray,
        eps: float,
        output: str,
        *,
        scale: float | None = None,
    ) -> str:
        """Integer layer norm of int32 ``x``; int32 output at ``scale`` (real units).

        By default the bound ``sqrt(D) max|gamma| + max|beta|`` of any output
        maps to ``2**30``, so nothing saturates and ``gamma`` keeps ~30 bits.
        """
        gamma, beta = np.asarray(gamma), np.asarray(beta)
        if scale is None:
            d = self.value(x).shape[-1]
            bound = math.sqrt(d) * float(np.abs(gamma).max()) + float(np.abs(beta).max())
            scale = bound / 2**30
        in_scale = float(self.scales[x])
        g = np.round(np.asarray(gamma, np.float64) / scale)
        b = np.round(np.asarray(beta, np.float64) / scale)
        if max(np.abs(g).max(), np.abs(b).max()) >= 2**31:
            raise ProgramError(f"{output}: layer norm weights do not fit int32 at scale {scale}")
        eps_units = min(round(eps / in_scale**2), 2**31 - 1)
        names = [
            self.param(f"{output}.gamma", g.astype(np.int32)),
            self.param(f"{output}.beta", b.astype(np.int32)),
        ]
        return self.op("layer_norm", [x, *names], output, scale, eps=int(eps_units))

    def table(self, x: str, fn, output: str, *, out_dtype: str = "int8") -> str:
        """Elementwise ``fn`` (a float function) on int8 ``x`` as a 256-entry table.

        The output scale maps the largest ``|fn|`` over the inputs seen in
        calibration to 127 (int8) or to ``2**24`` (int32, for a later per-channel rescale).
        """
        grid = (np.arange(256) - 128) * float(self.scales[x])
        real = fn(grid)
        used = np.unique(self.value(x)).astype(np.int64) + 128
        top = max(float(np.abs(real[used]).max()), 1e-8)
        limit = 127 if out_dtype == "int8" else 2**24
        scale = top / limit
        values = np.clip(np.round(real / scale), -limit - 1, limit).astype(out_dtype)
        self.param(f"{output}.table", values)
        return self.op("table", [x, f"{output}.table"], output, scale)

    def gelu(self, x: str, int8_name: str, output: str, *, keep: np.ndarray | None = None) -> str:
        """GELU of an int32 value: requantize to int8 over ``[-max(4, ...), max]``, then an int32 table."""
        real = self.real(x)
        if keep is not None:
            real = np.where(keep, real, 0.0)
        x8 = self.requantize(x, int8_name, scale=max(real.max(), min(-real.min(), GELU_FLOOR)) / 127.0)
        return self.table(x8, gelu, output, out_dtype="int32")

    def heads(self, x: str, n_heads: int, output: str) -> str:
        """``(batch, T, H*dh) -> (batch, H, T, dh)``."""
        dh = self.value(x).shape[-1] // n_heads
        split = self.op("reshape", [x], f"{output}.split", self.scales[x], shape=(-1, n_heads, dh))
        return self.op("transpose", [split], output, self.scales[x], perm=(1, 0, 2))

    def merge_heads(self, x: str, output: str) -> str:
        """``(batch, H, T, dh) -> (batch, T, H*dh)``."""
        _, h, _, dh = self.value(x).shape
        moved = self.op("transpose", [x], f"{output}.moved", self.scales[x], perm=(1, 0, 2))
        return self.op("reshape", [moved], output, self.scales[x], shape=(-1, h * dh))

    def attention(
        self, q: str, k: str, v: str, mask: str, output: str, *, causal: bool, keep: np.ndarray
    ) -> str:
        """Masked attention of int8 heads ``(batch, H, T, dh)``; int8 context out.

        Scores ``q k^T`` (int32) are rescaled to 2**-8-bit units with the
        ``log2(e) / sqrt(dh)`` factor folded into the multiplier, then the integer
        softmax gives 15-bit probabilities, and ``p v`` is requantized to int8.
        """
        dh = self.value(q).shape[-1]
        k_t = self.op("transpose", [k], f"{output}.k_t", self.scales[k], perm=(0, 2, 1))
        score_scale = float(self.scales[q]) * float(self.scales[k])
        scores = self.op("batch_matmul", [q, k_t], f"{output}.scores", score_scale)
        bits_scale = 1.0 / (math.log2(math.e) / math.sqrt(dh) * 2**SOFTMAX_TABLE_BITS)
        z = self.requantize(scores, f"{output}.z", out_dtype="int32", scale=bits_scale)
        table = self.param(f"{output}.exp2", exp2_table())
        p = self.op(
            "softmax",
            [z, mask, table],
            f"{output}.p",
            2.0**-SOFTMAX_OUT_BITS,
            causal=causal,
            out_bits=SOFTMAX_OUT_BITS,
        )
        ctx = self.op(
            "batch_matmul", [p, v], f"{output}.ctx32", 2.0**-SOFTMAX_OUT_BITS * float(self.scales[v])
        )
        return self.requantize(ctx, output, keep=keep)
