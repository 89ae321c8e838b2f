"""Where the CPU kernels are off, long programs run as a chain of compiled segments: the plan is
complete and the bits do not change."""

from __future__ import annotations

import numpy as np
import pytest

import aivm_jax
from aivm_jax.runtime import _infer
from aivm_jax.runtime._execute import plan_segments
from aivm_jax.runtime._fusion import fuse_chains


@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_plan_covers_every_step_and_every_value_flows(shipped_program, size):
    program = shipped_program
    steps = fuse_chains(program)
    segments = plan_segments(program, steps, size)
    assert [step for segment in segments for step in segment.steps] == steps
    available = {spec.name for spec in program.inputs}
    for segment in segments:
        assert set(segment.reads) <= available  # read only what inputs or earlier segments wrote
        assert set(segment.params) <= set(program.params)
        available |= set(segment.writes)
    assert {spec.name for spec in program.outputs} <= available


@pytest.mark.parametrize("size", [1, 2])
def test_segmented_runs_give_the_same_bits(shipped_program, fixed_inputs, monkeypatch, size):
    monkeypatch.setattr(_infer, "SEGMENT_STEPS", size)
    monkeypatch.setattr(_infer, "SMALL_INPUT_SEGMENT_STEPS", size)
    monkeypatch.setattr(_infer, "register_kernel", lambda: False)  # the plan without the CPU kernels
    entry = _infer._Compiled(shipped_program)  # a fresh entry, built with the small segment size
    assert len(entry._segments) >= 2
    monkeypatch.setitem(_infer._compiled, shipped_program.model_id, entry)
    segmented = aivm_jax.infer(shipped_program, fixed_inputs)
    reference = aivm_jax.infer(shipped_program, fixed_inputs, mode="reference")
    np.testing.assert_array_equal(segmented.outputs, reference.outputs)
    assert segmented.output_hash == reference.output_hash
    assert entry.local_cache_size() == 1


def test_with_the_cpu_kernels_a_program_runs_whole(shipped_program, monkeypatch):
    monkeypatch.setattr(_infer, "SEGMENT_STEPS", 1)
    monkeypatch.setattr(_infer, "register_kernel", lambda: True)
    assert _infer._Compiled(shipped_program)._segments == []


def test_small_and_large_inputs_take_their_plans_to_the_same_bits(shipped_program, monkeypatch):
    """Inputs of at most SMALL_INPUT_ELEMENTS elements each run the longer segments; each row's
    bits are the same in both plans."""
    monkeypatch.setattr(_infer, "SEGMENT_STEPS", 2)
    monkeypatch.setattr(_infer, "SMALL_INPUT_SEGMENT_STEPS", 5)
    monkeypatch.setattr(_infer, "register_kernel", lambda: False)
    entry = _infer._Compiled(shipped_program)
    assert len(entry._small_segments) < len(entry._segments)
    monkeypatch.setitem(_infer._compiled, shipped_program.model_id, entry)
    spec = shipped_program.inputs[0]
    rows = np.random.default_rng(5).integers(-128, 128, (7, *spec.shape)).astype(spec.dtype)
    small_rows = max(1, _infer.SMALL_INPUT_ELEMENTS // int(np.prod(spec.shape)))
    assert small_rows < len(rows)
    large = aivm_jax.infer(shipped_program, rows)
    small = aivm_jax.infer(shipped_program, rows[:small_rows])
    assert entry.local_cache_size() == 2  # one executable of each plan's first segment
    assert small.row_hashes == large.row_hashes[:small_rows]
    reference = aivm_jax.infer(shipped_program, rows, mode="reference")
    np.testing.assert_array_equal(large.outputs, reference.outputs)
