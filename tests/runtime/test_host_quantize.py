"""Host quantization of float input: the native function (``ops/_native/host_quantize.cc``) is held
to the NumPy path bit for bit, and both to the exact rational definition, on random and edge values."""

from __future__ import annotations

import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aivm_jax import InputRangeError
from aivm_jax.runtime import _host
from aivm_jax.runtime._host import native_quantizer, quantize_to_scale, quantizer_probe

OUT = {np.dtype(np.int8): (-128, 127), np.dtype(np.int32): (-(2**31), 2**31 - 1)}


def _exact(v: float, m: int, e: int, out: np.dtype) -> int:
    """``saturate(floor(v / s + 1/2))`` in rationals."""
    lo, hi = OUT[out]
    if math.isinf(v):
        return hi if v > 0 else lo
    q = math.floor(Fraction(v) / (Fraction(m) * Fraction(2) ** e) + Fraction(1, 2))
    return min(max(q, lo), hi)


def _native():
    native = native_quantizer()
    if native is None:
        assert shutil.which("g++") is None, "a C++ compiler is here, so the native quantizer must load"
        pytest.skip("no C++ compiler: the native quantizer is not built here")
    return native


def test_the_native_quantizer_loads_where_a_compiler_is():
    _native()


def test_the_probe_values_agree_with_the_exact_definition():
    native = _native()
    for values, (m, e) in quantizer_probe():
        for out in OUT:
            want = np.array([_exact(float(v), m, e, out) for v in values], out)
            np.testing.assert_array_equal(_host._quantize_numpy(values, m, e, out), want)
            np.testing.assert_array_equal(native(values, m, e, out), want)


scales = st.tuples(st.integers(0, 2**19 - 1).map(lambda k: 2 * k + 1), st.integers(-60, 10))


@given(
    scale=scales,
    dtype=st.sampled_from([np.float32, np.float64]),
    out=st.sampled_from(list(OUT)),
    data=st.data(),
)
def test_native_equals_numpy_on_random_values(scale, dtype, out, data):
    native = _native()
    m, e = scale
    s = math.ldexp(m, e)
    values = data.draw(
        hnp.arrays(
            dtype,
            st.integers(0, 40),
            elements=st.floats(allow_nan=False, width=32 if dtype is np.float32 else 64),
        )
    )
    near_ties = (np.array(data.draw(st.lists(st.integers(-300, 300), max_size=20)), np.float64) + 0.5) * s
    values = np.concatenate([values, near_ties.astype(dtype)])
    got = native(values, m, e, out)
    assert got.dtype == out and got.shape == values.shape
    np.testing.assert_array_equal(got, _host._quantize_numpy(values, m, e, out))
    for v, q in zip(values[:8], got[:8]):
        assert q == _exact(float(v), m, e, out)


def test_nan_is_refused_and_layouts_are_read_as_numpy_reads_them():
    native = _native()
    with pytest.raises(InputRangeError, match="NaN"):
        native(np.array([0.5, np.nan], np.float32), 1, -3, np.dtype(np.int8))
    grid = np.linspace(-20, 20, 60, dtype=np.float32).reshape(6, 10)
    for view in (grid[:, ::-2], grid.T, np.asfortranarray(grid), grid[:0]):
        np.testing.assert_array_equal(
            native(view, 3, -4, np.dtype(np.int8)), _host._quantize_numpy(view, 3, -4, np.dtype(np.int8))
        )


def test_without_the_native_function_numpy_quantizes(monkeypatch):
    values = np.array([-0.375, -0.125, 0.125, 0.375, 31.875, 1e9, -np.inf], np.float32)
    monkeypatch.setattr(_host, "native_quantizer", lambda: None)
    np.testing.assert_array_equal(
        quantize_to_scale(values, _host.encode_scale(0.25)), [-1, 0, 1, 2, 127, 127, -128]
    )
