"""The circuit export's rewrites (pool first, relu fused into the clip) change no output bit."""

from __future__ import annotations

import dataclasses

import numpy as np

import aivm_jax
from aivm_jax.ops import OPSET
from aivm_jax.proofs._rewrite import circuit_nodes


def run_rewritten(program, x: np.ndarray) -> np.ndarray:
    """The rewritten node list, run with the NumPy reference ops (a fused relu applied after its clip)."""
    values = {**program.params, program.inputs[0].name: x}
    for node in circuit_nodes(program):
        attrs = {k: v for k, v in node.attrs.items() if k != "fused_relu"}
        out = OPSET[node.op].reference(*(values[name] for name in node.inputs), **attrs)
        values[node.output] = OPSET["relu"].reference(out) if node.attrs.get("fused_relu") else out
    return values[program.outputs[0].name]


def full_range_inputs(program, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = program.inputs[0].shape
    rows = [np.full(shape, -128), np.full(shape, 127), rng.integers(0, 17, shape)]
    rows += [rng.integers(-128, 128, shape) for _ in range(n)]
    return np.stack(rows).astype(np.int8)


def test_digits_cnn_pools_before_it_requantizes_and_fuses_its_relus(programs):
    program = programs["digits-cnn"]
    ops = [node.op for node in circuit_nodes(program)]
    assert ops.index("max_pool") < ops.index("requantize")
    assert "relu" not in ops
    assert [n.attrs.get("fused_relu", False) for n in circuit_nodes(program) if n.op == "requantize"] == [
        True,
        True,
        False,
    ]


def test_rewritten_graphs_compute_the_same_bits(programs):
    for program in programs.values():
        x = full_range_inputs(program, 64)
        want = aivm_jax.infer(program, x, mode="reference").outputs
        np.testing.assert_array_equal(run_rewritten(program, x), want)


def test_a_negative_multiplier_keeps_the_pool_where_it_is(programs):
    program = programs["digits-cnn"]
    first = next(n for n in program.nodes if n.op == "requantize")
    multiplier = program.params[first.inputs[1]].copy()
    multiplier[0] = -multiplier[0]  # channel 0 now decreases with its input: max no longer commutes
    flipped = dataclasses.replace(program, params={**program.params, first.inputs[1]: multiplier})
    ops = [node.op for node in circuit_nodes(flipped)]
    assert ops.index("requantize") < ops.index("max_pool")
    x = full_range_inputs(flipped, 32, seed=1)
    np.testing.assert_array_equal(
        run_rewritten(flipped, x), aivm_jax.infer(flipped, x, mode="reference").outputs
    )
