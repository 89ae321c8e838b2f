"""The AVX-512 VNNI int8 GEMM kernel: it runs where the CPU allows it and equals the int64 product bit for bit.

Shapes cover every edge of the kernel's blocking: K not a multiple of 4 and
across the 4096-k passes, N across the 16/32/48-column panels, M across the
8-row tiles and 64-row tasks, products large enough for the thread split, and
sums that wrap modulo 2**32.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from aivm_jax.ops import reference
from aivm_jax.ops._gemm import _xla_matmul
from aivm_jax.ops._vnni import build_kernel, kernel_status
from aivm_jax.quant import int8_matmul

EDGE_SHAPES = [  # (M, K, N)
    (1, 1, 1),
    (1, 64, 64),
    (7, 3, 10),
    (8, 4, 16),
    (9, 5, 17),
    (64, 511, 32),
    (40, 100, 94),  # one K pass, ragged last panel: its partial vector stored shifted, whole
    (16, 9, 10),  # one K pass, one ragged panel of a single partial vector
    (24, 64, 40),  # one K pass, a ragged panel of two full vectors and one of 8 columns
    (16, 64, 100),  # one K pass, a ragged panel whose first vector is partial (masked) and second past N
    (16, 32, 15),  # a lone partial vector of 15 columns (masked), then 7 and 2 after a full one (shifted)
    (16, 32, 23),
    (16, 32, 50),
    (65, 512, 33),
    (130, 513, 48),
    (37, 1029, 61),
    (3, 2048, 100),
    (64, 4096, 32),  # exactly one K pass of 4096
    (130, 4097, 48),  # two K passes, the second of one 4-byte group (K not a multiple of 4)
    (37, 8195, 61),  # three K passes, a ragged panel and a short last row tile
    (300, 4200, 97),  # threaded, two K passes
    (300, 700, 97),  # over the serial threshold: rows x panel tasks on the thread pool
    (203, 128, 94),  # threaded, one K pass, a ragged panel and a short last row tile
    (1030, 66, 40),  # threaded, K not a multiple of 4, a last row task of 6 rows
    (1024, 256, 384),
]


def _cpu_has_vnni() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return all(f" {flag}" in flags for flag in ("avx512f", "avx512bw", "avx512dq", "avx512_vnni"))


def _exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return reference.wrap_int32(np.matmul(a.astype(np.int64), b.astype(np.int64)))


def test_the_kernel_runs_wherever_the_cpu_and_a_compiler_allow_it():
    status = kernel_status()
    if os.environ.get("AIVM_INT8_GEMM") == "xla":
        assert status.startswith("off")
    elif _cpu_has_vnni():
        assert status.startswith("avx512-vnni"), status  # CI's machines have VNNI and g++
    else:
        assert status.startswith("unavailable"), status


def test_the_library_is_built_once_and_reused():
    first = build_kernel()
    mtime = first.stat().st_mtime_ns
    assert build_kernel() == first and first.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("m", "k", "n"), EDGE_SHAPES)
def test_edge_shapes_equal_the_int64_product_and_xla(m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    got = np.asarray(jax.jit(int8_matmul)(a, b))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _exact(a, b))
    np.testing.assert_array_equal(got, np.asarray(jax.jit(_xla_matmul)(a, b)))


@pytest.mark.parametrize("left", range(1, 16))
def test_every_shifted_ragged_store_writes_exactly_its_columns(left):
    """N = 16 + left: one K pass, a full vector then one of `left` columns, stored whole after
    a permute that ends it at column N. Each output row is followed by a sentinel row, so a
    store that ran past its row (or wrote wrong lanes) would show in the next row's values."""
    rng = np.random.default_rng(left)
    a = rng.integers(-128, 128, (24, 36), dtype=np.int8)
    b = rng.integers(-128, 128, (36, 16 + left), dtype=np.int8)
    a[1::2] = 0  # every other row is all zero: its products must stay exactly zero
    got = np.asarray(jax.jit(int8_matmul)(a, b))
    np.testing.assert_array_equal(got, _exact(a, b))
    assert not got[1::2].any()


@pytest.mark.parametrize("value", [-128, 127])
def test_extreme_operands(value):
    a = np.full((33, 1000), value, np.int8)
    b = np.full((1000, 50), -128, np.int8)
    b[::3] = 127
    np.testing.assert_array_equal(np.asarray(int8_matmul(a, b)), _exact(a, b))


def test_sums_past_int32_wrap_modulo_2_to_the_32():
    k = 140_000  # 140000 * 128 * 128 > 2**31
    a = np.full((9, k), -128, np.int8)
    b = np.full((k, 3), -128, np.int8)
    expected = _exact(a, b)
    assert expected[0, 0] != 140_000 * 16_384  # the reference itself wrapped
    np.testing.assert_array_equal(np.asarray(jax.jit(int8_matmul)(a, b)), expected)


def test_leading_axes_batched_weights_vmap_and_eager_agree():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (2, 3, 40, 70), dtype=np.int8)
    b_shared = rng.integers(-128, 128, (70, 33), dtype=np.int8)
    b_batched = rng.integers(-128, 128, (2, 3, 70, 33), dtype=np.int8)
    for b in (b_shared, b_batched):
        expected = _exact(a, b)
        np.testing.assert_array_equal(np.asarray(int8_matmul(a, b)), expected)  # eager
        np.testing.assert_array_equal(np.asarray(jax.jit(int8_matmul)(a, b)), expected)
    mapped = jax.vmap(int8_matmul, in_axes=(0, None))(a, b_shared)
    np.testing.assert_array_equal(np.asarray(mapped), _exact(a, b_shared))
    mapped = jax.jit(jax.vmap(int8_matmul))(a.reshape(6, 40, 70), b_batched.reshape(6, 70, 33))
    np.testing.assert_array_equal(np.asarray(mapped).reshape(2, 3, 40, 33), _exact(a, b_batched))
    mapped = jax.jit(jax.vmap(int8_matmul, in_axes=(None, 0)))(a[0, 0], b_batched.reshape(6, 70, 33))
    np.testing.assert_array_equal(np.asarray(mapped), _exact(a[0, 0], b_batched.reshape(6, 70, 33)))
    mapped = jax.vmap(int8_matmul, in_axes=(1, None))(a, b_shared)
    np.testing.assert_array_equal(np.asarray(mapped), _exact(a, b_shared).transpose(1, 0, 2, 3))


def test_empty_axes():
    for m, k, n in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]:
        a, b = np.ones((m, k), np.int8), np.ones((k, n), np.int8)
        np.testing.assert_array_equal(np.asarray(jax.jit(int8_matmul)(a, b)), _exact(a, b))


def test_repeated_threaded_calls_are_identical():
    rng = np.random.default_rng(9)
    a = rng.integers(-128, 128, (512, 384), dtype=np.int8)
    b = rng.integers(-128, 128, (384, 200), dtype=np.int8)
    gemm = jax.jit(int8_matmul)
    first = np.asarray(gemm(a, b))
    for _ in range(5):
        np.testing.assert_array_equal(np.asarray(gemm(a, b)), first)
    np.testing.assert_array_equal(first, _exact(a, b))


def test_the_xla_engine_is_selectable_and_gives_the_same_bits():
    script = (
        "import numpy as np, jax; from aivm_jax.quant import int8_matmul; "
        "from aivm_jax.ops._vnni import kernel_status; "
        "rng = np.random.default_rng(3); a = rng.integers(-128, 128, (70, 300), dtype=np.int8); "
        "b = rng.integers(-128, 128, (300, 50), dtype=np.int8); "
        "print(kernel_status()); print(int(np.asarray(jax.jit(int8_matmul)(a, b)).astype(np.int64).sum()))"
    )
    env = {**os.environ, "AIVM_INT8_GEMM": "xla"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    status, total = done.stdout.split("\n")[:2]
    assert status == "off: AIVM_INT8_GEMM=xla"
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (70, 300), dtype=np.int8)
    b = rng.integers(-128, 128, (300, 50), dtype=np.int8)
    assert int(total) == int(np.asarray(int8_matmul(a, b)).astype(np.int64).sum())


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [
        ((2, 2), (2, 2), ((0, 0), (0, 0))),
        ((3, 3), (1, 1), ((1, 1), (1, 1))),
        ((3, 2), (2, 3), ((2, 0), (1, 1))),
    ],
)
def test_pooling_kernel_equals_the_reference_on_extremes(op, window, strides, padding):
    from aivm_jax.ops import lowering

    rng = np.random.default_rng(len(op) + sum(window))
    x = rng.integers(-128, 128, (4, 9, 11, 70), dtype=np.int8)  # 70 channels: one full and one masked step
    x[0] = -128
    x[1] = 127
    x[2, ::2] = -128  # ties at every half
    attrs = {"window": window, "strides": strides, "padding": padding}
    want = getattr(reference, op)(x, **attrs)
    got = jax.jit(lambda v: getattr(lowering, op)(v, **attrs))(x)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_kernel_equals_the_reference_on_extremes(causal):
    from aivm_jax.ops import lowering

    rng = np.random.default_rng(11)
    x = rng.integers(-(2**31), 2**31, (3, 4, 5, 130), dtype=np.int64).astype(np.int32)  # 60 rows of 130 keys
    x[0, 0, 0] = [2**31 - 1, -(2**31)] * 65  # distances up to 2**32 - 1
    x[1, :, :, :60] = rng.integers(-40, 40, (4, 5, 60))  # rows with real probability mass
    mask = rng.integers(0, 2, (3, 130)).astype(np.int8)
    mask[2] = 0  # a batch with every key masked
    table = np.round(2**30 * 2.0 ** (-np.arange(256) / 256)).astype(np.int32)
    attrs = {"causal": causal, "out_bits": 15}
    want = reference.softmax(x, mask, table, **attrs)
    fn = jax.jit(lambda *a: lowering.softmax(*a, **attrs))
    np.testing.assert_array_equal(np.asarray(fn(x, mask, table)), want)
    if kernel_status().startswith("avx512-vnni"):
        assert "aivm_int_softmax" in fn.lower(x, mask, table).as_text()
    big = np.tile(x, (8, 1, 1, 1))  # 480 rows x 130 keys: split over the thread pool
    np.testing.assert_array_equal(
        np.asarray(fn(big, np.tile(mask, (8, 1)), table)),
        reference.softmax(big, np.tile(mask, (8, 1)), table, **attrs),
    )


def _layer_norm_cases():
    rng = np.random.default_rng(17)
    wide = (-(2**31), 2**31)
    for d in (1, 3, 8, 13, 384, 8192):  # lane tails of the 8-wide loop, one row and the opset's maximum
        x = rng.integers(*wide, (5, d), dtype=np.int64).astype(np.int32)  # clipped to +-2**24
        x[1] = rng.integers(-1000, 1000, d)  # small rows: small divisors
        x[2] = 2**31 - 1  # a constant row: variance 0, root from eps alone
        x[3, : d // 2 + 1] = -(2**31)
        gamma = rng.integers(*wide, d, dtype=np.int64).astype(np.int32)  # products up to 2**57, saturation
        beta = rng.integers(*wide, d, dtype=np.int64).astype(np.int32)
        for eps in (0, 1, 2**31 - 1):
            yield x, gamma, beta, eps
    # Every divisor 2r for r = 1..2048, with numerators on and around the half-up ties.
    a = np.arange(2048, dtype=np.int64)
    x = np.stack([a, -a, a, -a], axis=1).astype(np.int32)  # mean 0, var a**2: r = a (1 for a = 0)
    gamma = np.array([1, -1, 2**20 + 1, -(2**31)], np.int32)
    yield x, gamma, np.array([0, 5, -5, 2**31 - 1], np.int32), 0
    yield np.tile(x, (3, 1)), gamma, np.zeros(4, np.int32), 3  # over the thread-split threshold


def test_layer_norm_kernel_equals_the_reference():
    from aivm_jax.ops import lowering

    for x, gamma, beta, eps in _layer_norm_cases():
        fn = jax.jit(lambda *a, eps=eps: lowering.layer_norm(*a, eps=eps))
        want = reference.layer_norm(x, gamma, beta, eps=eps)
        np.testing.assert_array_equal(np.asarray(fn(x, gamma, beta)), want, err_msg=f"{x.shape} eps={eps}")
        if kernel_status().startswith("avx512-vnni"):
            assert "aivm_int_layer_norm" in fn.lower(x, gamma, beta).as_text()


@pytest.mark.parametrize("out_dtype", ["int8", "int32"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_add_kernel_equals_the_reference(out_dtype, per_channel):
    from aivm_jax.ops import lowering

    rng = np.random.default_rng(5 + per_channel)
    for n, x_dtype, y_dtype in [(1, "int8", "int8"), (13, "int32", "int8"), (512, "int32", "int32")]:
        shape = (2, 64, n)  # 13 channels: a lane tail; 2 x 64 x 512 = 2**16: the kernel's thread split
        x = rng.integers(np.iinfo(x_dtype).min, np.iinfo(x_dtype).max, shape, endpoint=True).astype(x_dtype)
        y = rng.integers(np.iinfo(y_dtype).min, np.iinfo(y_dtype).max, shape, endpoint=True).astype(y_dtype)
        x.reshape(-1)[:2] = np.iinfo(x_dtype).min, np.iinfo(x_dtype).max
        params = (n,) if per_channel else ()
        mx, my = (rng.integers(-(2**30), 2**30, params, endpoint=True).astype(np.int32) for _ in range(2))
        shift = rng.integers(0, 62, params, endpoint=True).astype(np.int32)
        if per_channel:  # the extreme multipliers and shifts, 0 included (no rounding term)
            mx[:3], my[:3], shift[:3] = [2**30, -(2**30), 0][:n], [-(2**30), 2**30, 7][:n], [0, 62, 31][:n]
        fn = jax.jit(lambda *a: lowering.add(*a, out_dtype=out_dtype))
        want = reference.add(x, y, mx, my, shift, out_dtype=out_dtype)
        got = np.asarray(fn(x, y, mx, my, shift))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        if kernel_status().startswith("avx512-vnni"):
            assert "aivm_int_add" in fn.lower(x, y, mx, my, shift).as_text()


@pytest.mark.parametrize(
    ("lead", "m", "k", "n", "low", "high"),
    [
        ((3, 4), 17, 130, 33, 0, 2**15 + 1),  # attention probabilities: two byte planes, two skipped
        ((2,), 9, 4200, 50, -(2**31), 2**31),  # every plane, K over one 4096-k pass, sums that wrap
        ((5,), 8, 4, 16, -1, 2),  # the sign byte alone
        ((1,), 3, 7, 1, 0, 1),  # all zero: every plane skipped
    ],
)
def test_int32_by_int8_batch_matmul_equals_the_reference(lead, m, k, n, low, high):
    from aivm_jax.ops import lowering

    rng = np.random.default_rng(m + k + n)
    a = rng.integers(low, high, (*lead, m, k), dtype=np.int64).astype(np.int32)
    b = rng.integers(-128, 128, (*lead, k, n), dtype=np.int8)
    b.reshape(-1)[:3] = -128
    want = reference.batch_matmul(a, b)
    fn = jax.jit(lowering.batch_matmul)
    np.testing.assert_array_equal(np.asarray(fn(a, b)), want)
    if kernel_status().startswith("avx512-vnni"):
        assert "aivm_int32_int8_matmul_vnni" in fn.lower(a, b).as_text()
