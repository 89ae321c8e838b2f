"""Fused attention (scores -> requantize -> softmax -> context): which chains fuse, and the fused op
equals the NumPy reference ops one by one, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aivm_jax import infer
from aivm_jax.ops import reference
from aivm_jax.ops._fused import attention
from aivm_jax.ops._vnni import ATTENTION_INT8_TARGET_NAME, ATTENTION_TARGET_NAME, kernel_status
from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.runtime._fusion import FusedAttention, Requantized, fuse_chains
from aivm_jax.runtime._infer import _compiled_for

KERNELS = kernel_status().startswith("avx512-vnni")


def _reference(q, k_t, v, mask, table, multiplier, shift, *, causal, out_bits):
    z = reference.requantize(reference.batch_matmul(q, k_t), multiplier, shift, out_dtype="int32")
    p = reference.softmax(z, mask, table, causal=causal, out_bits=out_bits)
    return reference.batch_matmul(p, v)


def _operands(rng, lead, tq, tk, d, dv, *, table_bits=8, extreme=False):
    q = rng.integers(-128, 128, (*lead, tq, d), dtype=np.int8)
    k_t = rng.integers(-128, 128, (*lead, d, tk), dtype=np.int8)
    v = rng.integers(-128, 128, (*lead, tk, dv), dtype=np.int8)
    if extreme:  # the largest scores of either sign, and the extreme values of v
        q[..., 0, :], k_t[..., 0] = -128, -128
        q[..., -1, :], k_t[..., -1] = 127, -128
        v[..., 0, :], v[..., -1, :] = -128, 127
    mask = rng.integers(0, 2, (lead[0], tk), dtype=np.int8)
    mask[:, -1] = 1
    if lead[0] > 1:
        mask[1] = 0  # a batch row with every key masked: its context is exactly zero
    table = rng.integers(0, 2**30 + 1, (2**table_bits,), dtype=np.int64).astype(np.int32)
    table[0] = 2**30
    return q, k_t, v, mask, table


CASES = [
    # lead axes, Tq, Tk, D, Dv, causal, out_bits, table bits, multiplier, shift
    ((2, 4), 16, 17, 32, 32, True, 15, 8, 21754, 17),  # char-gpt's shape, one cached key
    ((3, 2), 9, 9, 5, 3, False, 1, 1, 1, 0),  # D and Dv off every multiple of 4 and 16
    ((2, 3), 20, 7, 70, 40, True, 30, 16, -(2**31), 62),  # Tq > Tk: early queries keep no key
    ((2,), 33, 129, 12, 17, True, 8, 4, 2**31 - 1, 31),  # no head axis; K past one 16-key block
    ((2, 2, 3), 5, 48, 64, 16, False, 16, 12, 123_456, 40),  # two head axes
    ((4, 4), 128, 129, 32, 32, True, 15, 8, 21754, 17),  # over the serial bound: the thread split
]


@pytest.mark.parametrize(("lead", "tq", "tk", "d", "dv", "causal", "out_bits", "table_bits", "m", "s"), CASES)
def test_attention_equals_the_reference_ops(lead, tq, tk, d, dv, causal, out_bits, table_bits, m, s):
    rng = np.random.default_rng(tq * tk + d)
    q, k_t, v, mask, table = _operands(rng, lead, tq, tk, d, dv, table_bits=table_bits, extreme=True)
    multiplier, shift = np.int32(m), np.int32(s)
    want = _reference(q, k_t, v, mask, table, multiplier, shift, causal=causal, out_bits=out_bits)
    fused = jax.jit(lambda *a: attention(*a, causal=causal, out_bits=out_bits))
    got = np.asarray(fused(q, k_t, v, mask, table, multiplier, shift))
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert np.any(want != 0)


def test_attention_saturates_scores_and_wraps_the_context_like_the_ops():
    """A multiplier that saturates z to int32's ends, and out_bits 30 with v at -128: the
    int32 context wraps modulo 2**32 in the reference and must wrap the same way here."""
    rng = np.random.default_rng(7)
    q, k_t, v, mask, table = _operands(rng, (2, 2), 6, 40, 16, 16, table_bits=2)
    q[:], k_t[:], v[:] = 127, 127, -128
    mask[:] = 1
    for m, s in [(2**31 - 1, 0), (-(2**31), 0), (2**31 - 1, 62)]:
        want = _reference(q, k_t, v, mask, table, np.int32(m), np.int32(s), causal=False, out_bits=30)
        got = jax.jit(lambda *a: attention(*a, causal=False, out_bits=30))(
            q, k_t, v, mask, table, np.int32(m), np.int32(s)
        )
        np.testing.assert_array_equal(np.asarray(got), want)


def _attention_program(
    *, extra_output: str | None = None, int8_context: bool = False, tq=8, tk=8, d=16, seed=0
):
    rng = np.random.default_rng(seed)
    nodes = (
        Node(op="batch_matmul", inputs=("q", "k_t"), output="scores"),
        Node(op="requantize", inputs=("scores", "m", "s"), output="z", attrs={"out_dtype": "int32"}),
        Node(op="softmax", inputs=("z", "mask", "exp2"), output="p", attrs={"causal": True, "out_bits": 15}),
        Node(op="batch_matmul", inputs=("p", "v"), output="ctx"),
    )
    outputs = [ValueSpec(name="ctx", dtype="int32", shape=(2, tq, d))]
    if int8_context:  # the context requantized to int8, as in the zoo's transformers
        nodes += (
            Node(op="requantize", inputs=("ctx", "m8", "s8"), output="ctx8", attrs={"out_dtype": "int8"}),
        )
        outputs = [ValueSpec(name="ctx8", dtype="int8", shape=(2, tq, d))]
    if extra_output is not None:  # an intermediate is also a program output: nothing fuses
        outputs.append(ValueSpec(name=extra_output, dtype="int32", shape=(2, tq, tk)))
    k = 8
    exp2 = np.round(2**30 * 2.0 ** (-np.arange(2**k) / 2**k)).astype(np.int32)
    return Program(
        name="attention",
        inputs=(
            ValueSpec(name="q", dtype="int8", shape=(2, tq, d)),
            ValueSpec(name="k_t", dtype="int8", shape=(2, d, tk)),
            ValueSpec(name="v", dtype="int8", shape=(2, tk, d)),
            ValueSpec(name="mask", dtype="int8", shape=(tk,)),
        ),
        outputs=tuple(outputs),
        nodes=nodes,
        params={
            "m": np.array(2**14 + rng.integers(0, 2**14), np.int32),
            "s": np.array(12, np.int32),
            "exp2": exp2,
            **(
                {"m8": rng.integers(2**14, 2**15, (d,), dtype=np.int32), "s8": np.full((d,), 24, np.int32)}
                if int8_context
                else {}
            ),
        },
    )


@pytest.mark.parametrize("int8_context", [False, True])
def test_a_program_runs_the_fused_attention_and_agrees_with_the_reference(int8_context):
    program = _attention_program(int8_context=int8_context)
    steps = fuse_chains(program)
    assert len(steps) == 1
    if int8_context:  # the context's requantize runs inside the kernel
        assert isinstance(steps[0], Requantized) and isinstance(steps[0].inner, FusedAttention)
    else:
        assert isinstance(steps[0], FusedAttention)
    rng = np.random.default_rng(1)
    feeds = {
        "q": rng.integers(-128, 128, (40, 2, 8, 16), dtype=np.int8),
        "k_t": rng.integers(-128, 128, (40, 2, 16, 8), dtype=np.int8),
        "v": rng.integers(-128, 128, (40, 2, 8, 16), dtype=np.int8),
        "mask": rng.integers(0, 2, (40, 8), dtype=np.int8),
    }
    jit = infer(program, feeds, mode="jit")
    ref = infer(program, feeds, mode="reference")
    eager = infer(program, feeds, mode="eager")
    np.testing.assert_array_equal(jit.outputs, ref.outputs)
    assert jit.output_hash == ref.output_hash == eager.output_hash
    if KERNELS:
        entry = _compiled_for(program)
        target = ATTENTION_INT8_TARGET_NAME if int8_context else ATTENTION_TARGET_NAME
        assert target in entry.fn.lower(entry.params_on(None), feeds).as_text()


@pytest.mark.parametrize("extra_output", ["scores", "z", "p"])
def test_an_attention_chain_with_an_intermediate_output_is_not_fused(extra_output):
    program = _attention_program(extra_output=extra_output)
    assert not any(isinstance(step, FusedAttention) for step in fuse_chains(program))
