"""Host-side helpers that turn float data into a program's integer input.

These run *outside* the consensus path: nodes agree on the integer input, not
on how a client produced it. They use NumPy floats and are documented so that
clients can reproduce them.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import InputFileError, InputRangeError, ProgramError

__all__ = [
    "SCALES_KEY",
    "SCALE_MANTISSA_BITS",
    "decode_scale",
    "encode_scale",
    "program_scales",
    "quantize_input",
    "quantize_to_scale",
    "read_input_file",
    "read_named_inputs",
]

SCALES_KEY = "scales"
"""Program metadata key of the real scales of inputs and outputs (see `program_scales`)."""

SCALE_MANTISSA_BITS = 20
"""A stored scale is ``mantissa * 2**exponent`` with an odd ``mantissa < 2**20``: precise to
one part in a million, and short enough that `quantize_to_scale` decides every rounding exactly
in float64 (``(2 q + 1) * mantissa < 2**53`` for any int32 ``q``)."""

_SCALE_EXPONENTS = (-200, 200)


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


def encode_scale(scale: float) -> dict[str, int]:
    """The stored form of a positive real scale: ``{"mantissa": m, "exponent": e}``, ``m`` odd.

    ``m * 2**e`` is ``scale`` rounded to `SCALE_MANTISSA_BITS` significant bits (ties to even,
    as float arithmetic rounds). Program metadata holds no floats; this is how a scale travels.

    >>> encode_scale(0.5), encode_scale(3.0)
    ({'mantissa': 1, 'exponent': -1}, {'mantissa': 3, 'exponent': 0})
    >>> encode_scale(0.1)
    {'mantissa': 838861, 'exponent': -23}
    """
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ProgramError(f"a scale must be a positive finite number, got {scale!r}")
    fraction, exponent = math.frexp(scale)  # scale = fraction * 2**exponent, fraction in [0.5, 1)
    mantissa = round(fraction * 2**SCALE_MANTISSA_BITS)
    exponent -= SCALE_MANTISSA_BITS
    while mantissa % 2 == 0:
        mantissa //= 2
        exponent += 1
    entry = {"mantissa": int(mantissa), "exponent": int(exponent)}
    decode_scale(entry)  # range check
    return entry


def decode_scale(entry: Mapping[str, Any]) -> float:
    """The exact float64 value ``mantissa * 2**exponent`` of a stored scale (see `encode_scale`)."""
    try:
        mantissa, exponent = entry["mantissa"], entry["exponent"]
    except (KeyError, TypeError):
        raise ProgramError(
            f"a stored scale must be {{'mantissa': m, 'exponent': e}}, got {entry!r}"
        ) from None
    if (
        not all(isinstance(v, int) and not isinstance(v, bool) for v in (mantissa, exponent))
        or not 0 < mantissa < 2**SCALE_MANTISSA_BITS
        or mantissa % 2 == 0
        or not _SCALE_EXPONENTS[0] <= exponent <= _SCALE_EXPONENTS[1]
    ):
        raise ProgramError(
            f"stored scale {dict(entry)!r} must have an odd mantissa in (0, 2**{SCALE_MANTISSA_BITS}) "
            f"and an exponent in {list(_SCALE_EXPONENTS)}"
        )
    return math.ldexp(mantissa, exponent)


def program_scales(program) -> dict[str, dict[str, int]]:
    """The stored real scales of a program's inputs and outputs, by value name (may be empty).

    Programs made by an importer (`aivm_jax.quant.import_onnx`) record them in
    ``metadata["scales"]``: ``{name: {"mantissa": m, "exponent": e}}``, meaning
    ``real = q * m * 2**e``. Programs without it have no scales, and `infer` refuses float input.
    """
    entries = program.metadata.get(SCALES_KEY) or {}
    known = {spec.name for spec in (*program.inputs, *program.outputs)}
    if not isinstance(entries, Mapping) or not set(entries) <= known:
        raise ProgramError(f"metadata.{SCALES_KEY} must map input/output names to scales, got {entries!r}")
    for entry in entries.values():
        decode_scale(entry)
    return {name: dict(entry) for name, entry in entries.items()}


def quantize_to_scale(values: Any, scale: Mapping[str, Any], dtype: str = "int8") -> np.ndarray:
    """Quantize real ``values`` exactly: ``q = saturate(floor(v / s + 1/2))`` with ``s`` a stored scale.

    The rounding is **half up** and is decided on the exact values: ``v`` is the
    float's exact binary value (float16/32/64 widen to float64 without change)
    and ``s = m * 2**e`` is exact (`encode_scale`), so ``q`` is the one integer with
    ``(q - 1/2) s <= v < (q + 1/2) s``, then saturated to ``dtype``'s range.
    A float64 estimate ``floor(v / s + 0.5)`` is corrected against these two
    bounds, which float64 computes without error (``|2 q +- 1| * m < 2**53``).
    ``+-inf`` saturate; NaN is refused.

    Args:
      values: a float (or integer) array of any shape.
      scale: ``{"mantissa": m, "exponent": e}``.
      dtype: ``"int8"`` or ``"int32"``.

    Raises:
      InputRangeError: a value is NaN.

    >>> s = encode_scale(0.25)
    >>> quantize_to_scale(np.array([-0.375, -0.125, 0.125, 0.375, 31.875, 1e9, -np.inf]), s)
    array([  -1,    0,    1,    2,  127,  127, -128], dtype=int8)
    """
    m, e = int(scale["mantissa"]), int(scale["exponent"])
    decode_scale({"mantissa": m, "exponent": e})  # range check
    v = np.asarray(values)
    if v.dtype.kind not in "fiub":
        raise InputRangeError(f"cannot quantize values of dtype {v.dtype}")
    out = np.dtype(dtype)
    native = native_quantizer() if v.dtype in _NATIVE_IN and out in _NATIVE_OUT else None
    if native is not None:
        return native(v, m, e, out)
    return _quantize_numpy(v, m, e, out)


def _quantize_numpy(v: np.ndarray, m: int, e: int, out: np.dtype) -> np.ndarray:
    """`quantize_to_scale` in NumPy: the definition that the native path is held to."""
    step = math.ldexp(m, e)
    v = v.astype(np.float64)
    if np.isnan(v).any():
        raise InputRangeError("input holds NaN; a NaN has no integer value")
    info = np.iinfo(out)
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.clip(np.floor(v / step + 0.5), info.min - 1, info.max + 1)
    half = math.ldexp(m, e - 1)  # s / 2, exact
    for _ in range(4):  # the estimate is off by at most one; each pass moves q one step
        low = (2.0 * q - 1.0) * half  # (q - 1/2) s, exact: |2q - 1| * m < 2**53
        high = (2.0 * q + 1.0) * half
        step_down, step_up = v < low, v >= high
        if not (step_down.any() or step_up.any()):
            break
        q = np.clip(q - step_down + step_up, info.min - 1, info.max + 1)
    return np.clip(q, info.min, info.max).astype(out)


_NATIVE_IN = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
_NATIVE_OUT = {np.dtype(np.int8): 0, np.dtype(np.int32): 1}


def _quantize_native(function, v: np.ndarray, m: int, e: int, out: np.dtype) -> np.ndarray:
    src = np.ascontiguousarray(v)
    result = np.empty(src.shape, out)
    status = function(
        src.__array_interface__["data"][0],
        _NATIVE_IN[src.dtype],
        src.size,
        m,
        e,
        result.__array_interface__["data"][0],
        _NATIVE_OUT[out],
    )
    if status:
        raise InputRangeError("input holds NaN; a NaN has no integer value")
    return result


@functools.cache
def native_quantizer():
    """``(values, m, e, dtype) -> array`` running ``ops/_native/host_quantize.cc``, if its library
    loads here and it agrees with `_quantize_numpy` on the edge cases (`quantizer_probe`); else
    None (and a warning where it disagrees: input quantization decides the integer input)."""
    from aivm_jax.runtime._native_host import host_library

    library = host_library()
    function = getattr(library, "aivm_quantize_to_scale", None) if library is not None else None
    if function is None:
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                         ctypes.c_void_p, ctypes.c_int64]  # fmt: skip
    native = functools.partial(_quantize_native, function)
    for values, (m, e) in quantizer_probe():
        for src in _NATIVE_IN:
            for out in _NATIVE_OUT:
                with np.errstate(over="ignore"):  # the largest float64s become inf in float32
                    x = values.astype(src)
                if not np.array_equal(native(x, m, e, out), _quantize_numpy(x, m, e, out)):
                    warnings.warn(
                        "the native input quantizer disagrees with NumPy here; using NumPy",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return None
    return native


def quantizer_probe() -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Edge values and scales ``(values, (mantissa, exponent))`` that both quantizer paths must
    agree on: exact ties, their float neighbours, saturation, infinities, zeros of both signs,
    subnormals and the largest floats."""
    cases = []
    for m, e in ((1, -7), (3, -2), (2**20 - 1, -27), (1, 0), (5, 20), (1, -140)):
        s = math.ldexp(m, e)
        k = np.arange(-300, 301, dtype=np.float64)
        ties = (k + 0.5) * s
        values = np.concatenate(
            [
                ties,
                np.nextafter(ties, np.inf),
                np.nextafter(ties, -np.inf),
                k * s,
                [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 2.2e-308, 1.7976931348623157e308],
                [-1.7976931348623157e308, 2.0**31 * s, -(2.0**31) * s, (2.0**31 - 0.5) * s],
            ]
        )
        cases.append((values, (m, e)))
    return cases


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
