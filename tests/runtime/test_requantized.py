"""Requantized steps: a layer norm, a table lookup or a fused attention with its requantize to int8
in one kernel; each equals the NumPy reference ops one by one, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aivm_jax import infer
from aivm_jax.ops import reference
from aivm_jax.ops._fused import attention, layer_norm_requantized, table_requantized
from aivm_jax.ops._vnni import LAYER_NORM_INT8_TARGET_NAME, TABLE_REQUANTIZE_TARGET_NAME, kernel_status
from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.runtime._fusion import fuse_chains
from aivm_jax.runtime._infer import _compiled_for

KERNELS = kernel_status().startswith("avx512-vnni")


def _rescale(rng, n, *, per_channel: bool):
    """Multipliers over all of int32 and shifts over [0, 62], with the edge values first."""
    shape = (n,) if per_channel else ()
    multiplier = rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
    shift = rng.integers(0, 63, shape).astype(np.int32)
    if per_channel:
        multiplier[:4] = [0, 1, -(2**31), 2**31 - 1]
        shift[:4] = [0, 62, 31, 1]
        multiplier[4 : n // 2] = rng.integers(2**13, 2**15, n // 2 - 4)  # realistic ones, unsaturated
        shift[4 : n // 2] = rng.integers(20, 40, n // 2 - 4)
    return multiplier, shift


@pytest.mark.parametrize(("rows", "d"), [(5, 1), (7, 13), (33, 128), (300, 384)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_layer_norm_requantized_equals_the_reference(rows, d, per_channel):
    rng = np.random.default_rng(rows * d)
    x = rng.integers(-(2**31), 2**31, (2, rows, d), dtype=np.int64).astype(np.int32)
    x[0, 0] = 2**31 - 1  # clipped rows and a constant row
    x[0, 1 % rows] = 5
    gamma = rng.integers(-(2**31), 2**31, (d,), dtype=np.int64).astype(np.int32)
    beta = rng.integers(-(2**31), 2**31, (d,), dtype=np.int64).astype(np.int32)
    multiplier, shift = _rescale(rng, d, per_channel=per_channel and d >= 8)
    eps = 12_345
    want = reference.requantize(
        reference.layer_norm(x, gamma, beta, eps=eps), multiplier, shift, out_dtype="int8"
    )
    got = jax.jit(lambda *a: layer_norm_requantized(*a, eps=eps))(x, gamma, beta, multiplier, shift)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 512), (300, 130), (1, 1 << 16)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_table_requantized_equals_the_reference(shape, per_channel):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    x.reshape(-1)[:2] = [-128, 127][: x.size]
    values = rng.integers(-(2**31), 2**31, (256,), dtype=np.int64).astype(np.int32)
    values[:2] = [-(2**31), 2**31 - 1]
    multiplier, shift = _rescale(rng, shape[-1], per_channel=per_channel and shape[-1] >= 8)
    want = reference.requantize(reference.table(x, values), multiplier, shift, out_dtype="int8")
    got = jax.jit(table_requantized)(x, values, multiplier, shift)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize(
    ("lead", "tq", "tk", "dv", "per_channel"), [((2, 4), 16, 17, 32, False), ((3,), 9, 40, 21, True)]
)
def test_attention_requantized_equals_the_reference(lead, tq, tk, dv, per_channel):
    rng = np.random.default_rng(tq + tk)
    q = rng.integers(-128, 128, (*lead, tq, 32), dtype=np.int8)
    k_t = rng.integers(-128, 128, (*lead, 32, tk), dtype=np.int8)
    v = rng.integers(-128, 128, (*lead, tk, dv), dtype=np.int8)
    mask = rng.integers(0, 2, (lead[0], tk), dtype=np.int8)
    mask[1] = 0  # every key masked: the context is 0 and requantizes to 0
    table = np.round(2**30 * 2.0 ** (-np.arange(256) / 256)).astype(np.int32)
    m, s = np.int32(21_754), np.int32(17)
    out_m, out_s = _rescale(rng, dv, per_channel=per_channel)
    z = reference.requantize(reference.batch_matmul(q, k_t), m, s, out_dtype="int32")
    p = reference.softmax(z, mask, table, causal=True, out_bits=15)
    want = reference.requantize(reference.batch_matmul(p, v), out_m, out_s, out_dtype="int8")
    got = jax.jit(lambda *a: attention(*a, causal=True, out_bits=15))(
        q, k_t, v, mask, table, m, s, out_m, out_s
    )
    assert got.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(got), want)


def _block_program(*, ln_output_too: bool = False):
    """A pre-LN feed-forward sublayer: layer norm -> requantize -> dense -> GELU table -> requantize
    -> matmul -> bias_add, in the shape the zoo's transformers have."""
    rng = np.random.default_rng(0)
    d, hidden = 24, 40
    nodes = (
        Node(op="layer_norm", inputs=("x", "gamma", "beta"), output="ln", attrs={"eps": 1000}),
        Node(op="requantize", inputs=("ln", "ln8.m", "ln8.s"), output="ln8", attrs={"out_dtype": "int8"}),
        Node(op="matmul", inputs=("ln8", "up.w"), output="up.acc"),
        Node(op="bias_add", inputs=("up.acc", "up.b"), output="up.biased"),
        Node(
            op="requantize", inputs=("up.biased", "up.m", "up.s"), output="up8", attrs={"out_dtype": "int8"}
        ),
        Node(op="table", inputs=("up8", "gelu.table"), output="gelu"),
        Node(
            op="requantize",
            inputs=("gelu", "gelu8.m", "gelu8.s"),
            output="gelu8",
            attrs={"out_dtype": "int8"},
        ),
        Node(op="matmul", inputs=("gelu8", "down.w"), output="down.acc"),
        Node(op="bias_add", inputs=("down.acc", "down.b"), output="down"),
    )
    outputs = [ValueSpec(name="down", dtype="int32", shape=(d,))]
    if ln_output_too:  # the layer norm's int32 rows are also an output: it must stay unfused
        outputs.append(ValueSpec(name="ln", dtype="int32", shape=(d,)))
    params = {
        "gamma": rng.integers(2**24, 2**26, (d,), dtype=np.int32),
        "beta": rng.integers(-(2**22), 2**22, (d,), dtype=np.int32),
        "ln8.m": rng.integers(2**14, 2**15, (d,), dtype=np.int32),
        "ln8.s": np.full((d,), 36, np.int32),
        "up.w": rng.integers(-128, 128, (d, hidden), dtype=np.int8),
        "up.b": rng.integers(-1000, 1000, (hidden,), dtype=np.int32),
        "up.m": rng.integers(2**14, 2**15, (hidden,), dtype=np.int32),
        "up.s": np.full((hidden,), 22, np.int32),
        "gelu.table": rng.integers(-(2**12), 2**12, (256,), dtype=np.int32),
        "gelu8.m": rng.integers(2**14, 2**15, (hidden,), dtype=np.int32),
        "gelu8.s": np.full((hidden,), 20, np.int32),
        "down.w": rng.integers(-128, 128, (hidden, d), dtype=np.int8),
        "down.b": rng.integers(-(2**31), 2**31, (d,), dtype=np.int64).astype(np.int32),  # wraps
    }
    return Program(
        name="ffn",
        inputs=(ValueSpec(name="x", dtype="int32", shape=(d,)),),
        outputs=tuple(outputs),
        nodes=nodes,
        params=params,
    )


def test_a_sublayer_fuses_into_four_steps_and_agrees_with_the_reference():
    program = _block_program()
    steps = fuse_chains(program)
    kinds = [type(step).__name__ for step in steps]
    assert kinds == ["Requantized", "FusedDense", "Requantized", "FusedDense"]
    assert steps[0].inner.op == "layer_norm" and steps[2].inner.op == "table"
    assert steps[3].multiplier is None and steps[3].out_dtype == "int32"  # matmul -> bias_add alone
    x = np.random.default_rng(1).integers(-(2**27), 2**27, (50, 24), dtype=np.int32)
    x[0] = 2**31 - 1
    jit = infer(program, x, mode="jit")
    ref = infer(program, x, mode="reference")
    np.testing.assert_array_equal(jit.outputs, ref.outputs)
    assert jit.output_hash == ref.output_hash == infer(program, x, mode="eager").output_hash
    if KERNELS:
        entry = _compiled_for(program)
        hlo = entry.fn.lower(entry.params_on(None), {"x": x}).as_text()
        assert LAYER_NORM_INT8_TARGET_NAME in hlo and TABLE_REQUANTIZE_TARGET_NAME in hlo


def test_a_layer_norm_whose_rows_are_read_elsewhere_is_not_requantized_in_place():
    program = _block_program(ln_output_too=True)
    steps = fuse_chains(program)
    assert isinstance(steps[0], Node) and steps[0].op == "layer_norm"
    x = np.random.default_rng(2).integers(-(2**27), 2**27, (9, 24), dtype=np.int32)
    for got, want in zip(infer(program, x).outputs, infer(program, x, mode="reference").outputs, strict=True):
        np.testing.assert_array_equal(got, want)
