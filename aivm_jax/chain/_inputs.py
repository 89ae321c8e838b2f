"""A request's input bytes as the batch a program runs on, refusing anything malformed.

A request carries its input inline (the rows' raw little-endian bytes, C
order, in the program's input dtype) or at a URI (a ``.npy`` file). Either is
chosen by the requester, so every length, header and dtype is checked before
an array is built: a wrong size is an `InputShapeError`, a file that is not a
plain integer ``.npy`` an `InputFileError`, values outside the input dtype an
`InputRangeError`; never a bare ``ValueError`` from a reshape, and never an
allocation larger than the bytes received.
"""

from __future__ import annotations

import io
import math

import numpy as np

from aivm_jax._errors import InputFileError, InputRangeError, InputShapeError
from aivm_jax.program import ValueSpec

__all__ = ["batch_from_inline", "batch_from_npy"]


def batch_from_inline(raw: bytes, spec: ValueSpec) -> np.ndarray:
    """Rows of ``spec`` from inline bytes: a whole number (>= 1) of rows at the full row shape.

    Returns:
      An array of ``spec.dtype`` and shape ``(rows, *spec.shape)``.

    Raises:
      InputShapeError: the length is zero or not a multiple of one row's bytes.
    """
    dtype = np.dtype(spec.dtype)
    row = math.prod(spec.shape) * dtype.itemsize
    if not raw or len(raw) % row:
        raise InputShapeError(
            f"the request's inline input has {len(raw)} bytes, not a whole number of rows of {row} "
            f"bytes ({spec.describe()}, little-endian); the requester sent a malformed input"
        )
    x = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return x.reshape((-1, *spec.shape))


def batch_from_npy(raw: bytes, spec: ValueSpec) -> np.ndarray:
    """Rows of ``spec`` from the bytes of a ``.npy`` file (integers, shape ``(rows, *row)``).

    The header is read first: the data that follows must be exactly the bytes its
    shape and dtype announce, so a header claiming a huge array allocates nothing.
    Values of a wider integer dtype are accepted when they fit ``spec.dtype``.

    Returns:
      An array of ``spec.dtype`` and shape ``(rows, *row)``, ``row`` accepted by ``spec``.

    Raises:
      InputFileError: not a ``.npy`` file, not integers, or the wrong number of bytes.
      InputShapeError: the rows do not have the program's row shape.
      InputRangeError: values outside ``spec.dtype``.
    """
    handle = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as error:
        raise InputFileError(f"the request's input is not a .npy file: {error}") from None
    if dtype.kind not in "iu" or dtype.hasobject:
        raise InputFileError(f"the request's input holds {dtype}, not integers")
    size = math.prod(shape) * dtype.itemsize
    if size != len(raw) - handle.tell():
        raise InputFileError(
            f"the request's .npy input announces {shape} {dtype} ({size} bytes) but carries "
            f"{len(raw) - handle.tell()} bytes"
        )
    if len(shape) != len(spec.shape) + 1 or shape[0] < 1 or not spec.accepts_shape(tuple(shape[1:])):
        raise InputShapeError(
            f"the request's input has shape {tuple(shape)}; the program takes rows of {spec.describe()}"
        )
    x = np.frombuffer(raw, dtype=dtype, offset=handle.tell()).reshape(shape, order="F" if fortran else "C")
    target = np.dtype(spec.dtype)
    if dtype != target:
        info = np.iinfo(target)
        if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
            raise InputRangeError(f"the request's input holds values outside {target}")
    return np.ascontiguousarray(x, dtype=target)
