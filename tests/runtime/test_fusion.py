"""Fused dense chains: which chains fuse, and the fused op equals the ops one by one (and the NumPy reference)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aivm_jax import infer
from aivm_jax.ops import lowering, reference
from aivm_jax.ops._fused import dense
from aivm_jax.ops._vnni import CONV_TARGET_NAME, DENSE_PACKED_TARGET_NAME, DENSE_TARGET_NAME, kernel_status
from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.runtime._fusion import FusedDense, fuse_chains
from aivm_jax.runtime._infer import _compiled_for


def _dense_program(*, relu: bool, bias: bool, out_dtype: str, extra_reader: bool = False, k=70, n=37, seed=0):
    rng = np.random.default_rng(seed)
    nodes = [Node(op="matmul", inputs=("x", "w"), output="acc")]
    last = "acc"
    if bias:
        nodes.append(Node(op="bias_add", inputs=(last, "b"), output="biased"))
        last = "biased"
    nodes.append(Node(op="requantize", inputs=(last, "m", "s"), output="q", attrs={"out_dtype": out_dtype}))
    last = "q"
    if relu:
        nodes.append(Node(op="relu", inputs=("q",), output="r"))
        last = "r"
    outputs = [ValueSpec(name=last, dtype=out_dtype, shape=(n,))]
    if extra_reader:  # the raw product is also a program output: the chain must not fuse
        outputs.append(ValueSpec(name="acc", dtype="int32", shape=(n,)))
    params = {
        "w": rng.integers(-128, 128, (k, n), dtype=np.int8),
        "b": rng.integers(-(2**31), 2**31, (n,), dtype=np.int64).astype(np.int32),  # wraps when added
        # Every multiplier sign and size, every shift from 0 (no rounding) to 62.
        "m": rng.integers(-(2**31), 2**31, (n,), dtype=np.int64).astype(np.int32),
        "s": rng.integers(0, 63, (n,)).astype(np.int32),
    }
    params["m"][:4] = [0, 1, -1, 2**31 - 1]
    params["s"][:4] = [0, 62, 1, 31]
    if not bias:
        del params["b"]
    return Program(
        name="dense",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(k,)),),
        outputs=tuple(outputs),
        nodes=tuple(nodes),
        params=params,
    )


@pytest.mark.parametrize("out_dtype", ["int8", "int32"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_chains_equal_the_reference(out_dtype, relu, bias):
    program = _dense_program(relu=relu, bias=bias, out_dtype=out_dtype)
    steps = fuse_chains(program)
    assert len(steps) == 1 and isinstance(steps[0], FusedDense) and steps[0].relu == relu
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (300, 70), dtype=np.int8)
    x[0], x[1] = -128, 127
    jit = infer(program, x, mode="jit")  # fused
    ref = infer(program, x, mode="reference")
    eager = infer(program, x, mode="eager")  # op by op
    np.testing.assert_array_equal(jit.outputs, ref.outputs)
    np.testing.assert_array_equal(eager.outputs, ref.outputs)
    assert jit.output_hash == ref.output_hash == eager.output_hash
    if kernel_status().startswith("avx512-vnni"):  # the fused kernel really ran
        entry = _compiled_for(program)
        hlo = entry.fn.lower(entry.params_on(None), {"x": x}).as_text()
        assert DENSE_TARGET_NAME in hlo


def test_a_chain_whose_intermediate_is_read_elsewhere_is_not_fused():
    program = _dense_program(relu=True, bias=True, out_dtype="int8", extra_reader=True)
    assert not any(isinstance(step, FusedDense) for step in fuse_chains(program))
    x = np.random.default_rng(2).integers(-128, 128, (5, 70), dtype=np.int8)
    np.testing.assert_array_equal(infer(program, x).outputs, infer(program, x, mode="reference").outputs)


def test_dense_keeps_leading_axes_and_matches_the_unfused_lowering():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 5, 4200), dtype=np.int8)  # K over one 4096-k pass
    w = rng.integers(-128, 128, (4200, 20), dtype=np.int8)
    b = rng.integers(-1000, 1000, (20,), dtype=np.int32)
    m, s = np.int32(23_000), np.int32(20)  # per-tensor scalars
    got = jax.jit(lambda *a: dense(*a, out_dtype="int8", relu=True))(x, w, b, m, s)
    want = lowering.relu(
        lowering.requantize(lowering.bias_add(lowering.matmul(x, w), b), m, s, out_dtype="int8")
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    expected = reference.relu(
        reference.requantize(reference.bias_add(reference.matmul(x, w), b), m, s, out_dtype="int8")
    )
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize(
    ("hw", "kernel", "strides", "padding"),
    [
        ((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1))),
        ((9, 7), (3, 2), (2, 1), ((2, 0), (0, 1))),
        ((5, 5), (5, 5), (1, 1), ((0, 0), (0, 0))),
        ((6, 10), (1, 1), (3, 2), ((0, 0), (0, 0))),
    ],
)
def test_fused_conv_chains_equal_the_reference(hw, kernel, strides, padding):
    rng = np.random.default_rng(sum(hw) + sum(kernel))
    c, o = 5, 19
    program = Program(
        name="conv",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(*hw, c)),),
        outputs=(ValueSpec(name="r", dtype="int8", shape=_conv_out(hw, kernel, strides, padding, o)),),
        nodes=(
            Node(
                op="conv2d", inputs=("x", "w"), output="acc", attrs={"strides": strides, "padding": padding}
            ),
            Node(op="bias_add", inputs=("acc", "b"), output="biased"),
            Node(op="requantize", inputs=("biased", "m", "s"), output="q", attrs={"out_dtype": "int8"}),
            Node(op="relu", inputs=("q",), output="r"),
        ),
        params={
            "w": rng.integers(-128, 128, (*kernel, c, o), dtype=np.int8),
            "b": rng.integers(-5000, 5000, (o,), dtype=np.int32),
            "m": rng.integers(-(2**15), 2**15, (o,), dtype=np.int32),
            "s": rng.integers(8, 20, (o,), dtype=np.int32),
        },
    )
    steps = fuse_chains(program)
    assert len(steps) == 1 and steps[0].conv is not None
    x = rng.integers(-128, 128, (70, *hw, c), dtype=np.int8)
    ref = infer(program, x, mode="reference")
    np.testing.assert_array_equal(infer(program, x, mode="jit").outputs, ref.outputs)
    np.testing.assert_array_equal(infer(program, x, mode="eager").outputs, ref.outputs)
    if kernel_status().startswith("avx512-vnni"):
        entry = _compiled_for(program)
        assert CONV_TARGET_NAME in entry.fn.lower(entry.params_on(None), {"x": x}).as_text()


def _conv_out(hw, kernel, strides, padding, o):
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(hw, kernel, strides, padding)) + (o,)


@pytest.mark.parametrize(
    ("k", "n"), [(1, 1), (3, 16), (4, 17), (70, 32), (130, 33), (64, 48), (600, 100), (128, 512)]
)
def test_constant_weights_packed_ahead_equal_the_reference(k, n):
    """A program's constant weights are packed once when it is compiled (`pack_weights`), in the
    kernel's layout for every panel width (N of 1..16, 17..32, 48-wide) and K past one 512 pass."""
    rng = np.random.default_rng(k * n)
    x = rng.integers(-128, 128, (2, 9, k), dtype=np.int8)
    x[0, 0], x[0, 1] = -128, 127
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    w[:, 0] = -128  # the extreme column sums
    b = rng.integers(-(2**31), 2**31, (n,), dtype=np.int64).astype(np.int32)
    m = rng.integers(-(2**31), 2**31, (n,), dtype=np.int64).astype(np.int32)
    s = rng.integers(0, 63, (n,)).astype(np.int32)
    fn = jax.jit(lambda x, b, m, s: dense(x, w, b, m, s, out_dtype="int32", relu=False))  # w: a constant
    got = np.asarray(fn(x, b, m, s))
    want = reference.requantize(reference.bias_add(reference.matmul(x, w), b), m, s, out_dtype="int32")
    np.testing.assert_array_equal(got, want)
    if kernel_status().startswith("avx512-vnni"):
        assert DENSE_PACKED_TARGET_NAME in fn.lower(x, b, m, s).as_text()
