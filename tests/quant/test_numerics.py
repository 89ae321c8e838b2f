"""Quantization numerics (host side): multipliers, weights, biases, the PTQ converter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aivm_jax import ProgramError
from aivm_jax.quant import quantize_bias, quantize_multiplier, quantize_weights


@given(st.floats(min_value=1e-12, max_value=2.0**14, allow_nan=False), st.sampled_from([15, 31]))
def test_multiplier_is_close_and_in_range(real, bits):
    m, s = quantize_multiplier(real, bits)
    assert 0 <= s <= 62 and 0 < m < 2**bits
    if s < 62:
        assert 2 ** (bits - 1) <= m
        assert abs(m / 2**s - real) <= real * 2.0**-bits
    else:
        assert abs(m / 2**s - real) <= 2.0**-62


@pytest.mark.parametrize("real", [0.0, -1.0, 2.0**31, float("inf"), float("nan")])
def test_multiplier_refuses_bad_factors(real):
    with pytest.raises(ProgramError):
        quantize_multiplier(real)


def test_weights_are_per_channel_and_symmetric():
    w = np.array([[1.0, -0.5, 0.0], [-2.0, 0.25, 0.0]])
    q, scales = quantize_weights(w)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(np.abs(q).max(axis=0), [127, 127, 0])
    np.testing.assert_allclose(q * scales, w, atol=scales.max() / 2)
    assert scales[2] == 1.0  # an all-zero channel keeps a harmless scale


def test_bias_is_int32_at_the_product_scale():
    np.testing.assert_array_equal(quantize_bias(np.array([1.0, -1.0]), np.array([0.25, 0.5])), [4, -2])
    with pytest.raises(ProgramError):
        quantize_bias(np.array([1.0]), np.array([1e-12]))
