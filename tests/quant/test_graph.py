"""GraphBuilder: the float functions it turns into integer tables, and calibrated rescaling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aivm_jax import ValueSpec
from aivm_jax.quant._graph import GraphBuilder, exp2_table, gelu


def _builder(x: np.ndarray, scale: float) -> GraphBuilder:
    spec = ValueSpec(name="x", dtype="int8", shape=x.shape[1:])
    return GraphBuilder("t", (spec,), {"x": x}, {"x": scale})


def test_exp2_table_is_two_to_the_minus_fraction():
    table = exp2_table(8)
    assert table.dtype == np.int32 and table.shape == (256,) and table[0] == 2**30
    exact = 2.0**30 * 2.0 ** (-np.arange(256) / 256)
    assert np.abs(table - exact).max() <= 0.5
    assert (np.diff(table) < 0).all()


@pytest.mark.parametrize("out_dtype", ["int8", "int32"])
def test_gelu_table_is_within_half_a_step(out_dtype):
    x = np.arange(-128, 128, dtype=np.int8)[None, :]
    g = _builder(x, 0.05)
    g.table("x", gelu, "y", out_dtype=out_dtype)
    got = g.real("y")[0]
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x[0] * 0.05])
    step = float(g.scales["y"])
    assert np.abs(got - expected).max() <= step / 2 + 1e-12
    assert g.value("y").dtype == np.dtype(out_dtype)


def test_requantize_maps_the_calibration_maximum_to_127():
    x = np.array([[-100, 3, 50, 77]], np.int8)
    g = _builder(x, 0.1)
    g.requantize("x", "y", keep=np.array([[True, True, True, False]]))
    assert g.value("y").tolist() == [[-127, 4, 64, 98]]  # max over kept |x| is 100
