"""Host-side numerics of post-training quantization (floats allowed: this is off the inference path).

Scheme: symmetric, zero point 0. A real tensor ``r`` is ``scale * q`` with
``q`` an int8 in ``[-127, 127]`` (weights, per output channel) or
``[-128, 127]`` (activations, per tensor). Biases are int32 at scale
``s_in * s_w``. A real rescale factor ``r`` becomes an int32 multiplier ``M``
and a shift ``s`` with ``r ~= M / 2**s`` for the ``requantize`` op.
"""

from __future__ import annotations

import math

import numpy as np

from aivm_jax._errors import ProgramError

__all__ = ["MULTIPLIER_BITS", "quantize_bias", "quantize_multiplier", "quantize_weights"]


MULTIPLIER_BITS = 15
"""Significant bits of a requantize multiplier. 15 bits leave a relative error of at
most 2**-16, far below an int8 output step, and keep ``|x * M|`` under 2**35 for the
int32 accumulators of these models, which keeps proof circuits small."""


def quantize_multiplier(real: float, bits: int = MULTIPLIER_BITS) -> tuple[int, int]:
    """Return ``(M, s)`` with ``M / 2**s`` the closest such value to ``real``.

    ``M`` lies in ``[2**(bits-1), 2**bits)`` unless ``real`` is so small that
    ``s`` would pass 62, in which case ``M`` shrinks instead. ``real`` must lie
    in ``(0, 2**bits)`` (a shift cannot be negative) and ``bits`` in ``[2, 31]``.

    >>> quantize_multiplier(0.5)
    (16384, 15)
    >>> quantize_multiplier(3.0)
    (24576, 13)
    """
    if not 0.0 < real < 2.0**31 or not math.isfinite(real):
        raise ProgramError(f"rescale factor {real!r} is outside (0, 2**31); check the scales")
    if not 2 <= bits <= 31:
        raise ProgramError(f"multiplier bits must lie in [2, 31], got {bits}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    multiplier = round(mantissa * 2**bits)
    if multiplier == 2**bits:
        multiplier //= 2
        exponent += 1
    shift = bits - exponent
    if shift > 62:
        multiplier = round(multiplier / 2 ** (shift - 62))
        shift = 62
    if shift < 0:
        raise ProgramError(f"rescale factor {real!r} needs a negative shift; use more multiplier bits")
    return int(multiplier), int(shift)


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights; the last axis is the output channel.

    Returns ``(q, scales)``: int8 ``q`` in ``[-127, 127]`` of ``w``'s shape and
    float64 ``scales`` of shape ``(N,)`` with ``w ~= q * scales``.
    """
    w = np.asarray(w, dtype=np.float64)
    max_abs = np.abs(w.reshape(-1, w.shape[-1])).max(axis=0)
    scales = np.where(max_abs > 0, max_abs / 127.0, 1.0)
    q = np.clip(np.round(w / scales), -127, 127).astype(np.int8)
    return q, scales


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias ``round(b / scale)``; ``scale`` is ``s_in * s_w`` per channel."""
    q = np.round(np.asarray(b, dtype=np.float64) / scale)
    if np.abs(q).max(initial=0) >= 2**31:
        raise ProgramError("a bias does not fit int32 at its scale; the weights are degenerate")
    return q.astype(np.int32)
