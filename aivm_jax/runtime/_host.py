"""Host-side helpers that turn float data into a program's integer input.

These run *outside* the consensus path: nodes agree on the integer input, not
on how a client produced it. They use NumPy floats and are documented so that
clients can reproduce them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quantize_input"]


def quantize_input(values: np.ndarray, scale: float, dtype: str = "int8") -> np.ndarray:
    """``q = clip(floor(values / scale + 1/2), dtype range)``: round half up, then saturate.

    Args:
      values: float array of any shape.
      scale: the real value of one integer step (the program's input scale).
      dtype: ``"int8"`` or ``"int32"``.

    >>> quantize_input(np.array([-2.5, 2.5, 1000.0]), 1.0)
    array([ -2,   3, 127], dtype=int8)
    """
    info = np.iinfo(dtype)
    q = np.floor(np.asarray(values, dtype=np.float64) / scale + 0.5)
    return np.clip(q, info.min, info.max).astype(dtype)
