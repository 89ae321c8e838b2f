"""Variable-length axes and value bounds on a program's inputs."""

from __future__ import annotations

import numpy as np
import pytest

import aivm_jax
from aivm_jax import InputRangeError, InputShapeError, Node, Program, ProgramError, ValueSpec


def _lookup(dynamic=(0,), bounds=(0, 9), shape=(6,)):
    return Program(
        name="lookup",
        inputs=(ValueSpec(name="ids", dtype="int32", shape=shape, dynamic=dynamic, bounds=bounds),),
        outputs=(ValueSpec(name="y", dtype="int8", shape=(*shape, 3), dynamic=dynamic),),
        nodes=(Node(op="gather", inputs=("ids", "table"), output="y"),),
        params={"table": np.arange(30, dtype=np.int8).reshape(10, 3)},
    )


def test_any_length_up_to_the_maximum_runs(tmp_path):
    program = _lookup()
    for length in (1, 4, 6):
        ids = np.arange(length, dtype=np.int32)[None] % 10
        out = aivm_jax.infer(program, ids).outputs
        np.testing.assert_array_equal(out[0], program.params["table"][ids[0]])
    with pytest.raises(InputShapeError, match="<=6"):
        aivm_jax.infer(program, np.zeros((1, 7), np.int32))
    with pytest.raises(InputRangeError, match="declared bounds"):
        aivm_jax.infer(program, np.array([[3, 10]], np.int32))


def test_dynamic_axes_and_bounds_are_part_of_the_model_id(tmp_path):
    program = _lookup()
    aivm_jax.save(program, tmp_path / "p.aivm")
    loaded = aivm_jax.load(tmp_path / "p.aivm")
    assert loaded.inputs == program.inputs and loaded.model_id == program.model_id
    assert _lookup(bounds=(0, 8)).model_id != program.model_id
    static = _lookup(dynamic=(), bounds=None)
    assert static.model_id not in {program.model_id}
    assert "dynamic" not in static.inputs[0].to_json() and "bounds" not in static.inputs[0].to_json()


def test_bad_specs_and_graphs_that_only_fit_one_length_are_refused():
    with pytest.raises(ProgramError, match="dynamic axes"):
        ValueSpec(name="x", dtype="int8", shape=(4,), dynamic=(1,))
    with pytest.raises(ProgramError, match="bounds"):
        ValueSpec(name="x", dtype="int8", shape=(4,), bounds=(0, 300))
    with pytest.raises(ProgramError, match="reshape"):
        Program(
            name="fixed",
            inputs=(ValueSpec(name="x", dtype="int8", shape=(4,), dynamic=(0,)),),
            outputs=(ValueSpec(name="y", dtype="int8", shape=(2, 2)),),
            nodes=(Node(op="reshape", inputs=("x",), output="y", attrs={"shape": [2, 2]}),),
            params={},
        )
