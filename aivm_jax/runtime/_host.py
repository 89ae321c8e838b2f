"""Host-side helpers that turn float data into a program's integer input.

These run *outside* the consensus path: nodes agree on the integer input, not
on how a client produced it. They use NumPy floats and are documented so that
clients can reproduce them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aivm_jax._errors import InputFileError

__all__ = ["quantize_input", "read_input_file", "read_named_inputs"]


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


def read_input_file(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read an inference input from ``.npy`` (no pickles) or ``.json`` (nested lists of integers).

    The array is returned as read; `infer` checks its dtype, shape and range.
    ``mmap=True`` maps a ``.npy`` instead of reading it (large batch jobs).

    Raises:
      InputFileError: the file is missing, has another suffix, or does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"no input file at {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "inputs" in data:
                data = data["inputs"]
            array = np.asarray(data)
            if array.dtype == object:
                raise ValueError("rows have different lengths")
            return array
    except (ValueError, OSError) as error:
        raise InputFileError(f"cannot read {path}: {error}") from None
    raise InputFileError(f"{path}: input files must end in .npy or .json")


def read_named_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a multi-input inference input: an ``.npz`` with one array per input name (no pickles).

    Raises:
      InputFileError: the file is missing or is not a readable ``.npz``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"no input file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as error:
        raise InputFileError(f"cannot read {path} as .npz: {error}") from None
