"""Program construction: a `Program` that exists is valid."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax import Node, OpError, Program, ProgramError, ValueSpec


def tiny(**overrides):
    fields = dict(
        name="tiny",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(3,)),),
        outputs=(ValueSpec(name="y", dtype="int32", shape=(2,)),),
        nodes=(Node(op="matmul", inputs=("x", "w"), output="y"),),
        params={"w": np.arange(6, dtype=np.int8).reshape(3, 2)},
    )
    fields.update(overrides)
    return Program(**fields)


def test_valid_program_and_its_summary():
    program = tiny()
    assert program.op_counts() == {"matmul": 1}
    assert program.param_count() == 6
    assert program.model_id.startswith("0x") and len(program.model_id) == 66


def test_params_are_frozen_copies():
    w = np.zeros((3, 2), np.int8)
    program = tiny(params={"w": w})
    w[0, 0] = 5
    assert program.params["w"][0, 0] == 0
    with pytest.raises(ValueError):
        program.params["w"][0, 0] = 1


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"nodes": (Node(op="matmul", inputs=("x", "v"), output="y"),)}, ProgramError, "not defined"),
        ({"nodes": (Node(op="matmul", inputs=("x", "w"), output="x"),)}, ProgramError, "defined twice"),
        ({"outputs": (ValueSpec(name="y", dtype="int8", shape=(2,)),)}, ProgramError, "declared int8"),
        ({"outputs": (ValueSpec(name="z", dtype="int32", shape=(2,)),)}, ProgramError, "not computed"),
        ({"params": {"w": np.zeros((3, 2), np.float32)}}, ProgramError, "only int8/int32"),
        ({"params": {"w": np.zeros((3, 2), np.int32)}}, OpError, "dtype int8"),
        ({"metadata": {"accuracy": 0.98}}, ProgramError, "float"),
        ({"opset": 2}, ProgramError, "opset 2"),
        ({"inputs": ()}, ProgramError, "at least one input"),
    ],
)
def test_invalid_programs_are_refused(overrides, error, message):
    with pytest.raises(error, match=message):
        tiny(**overrides)


def test_value_specs_check_themselves():
    with pytest.raises(ProgramError, match="dtype"):
        ValueSpec(name="x", dtype="float32", shape=(3,))
    with pytest.raises(ProgramError, match="name"):
        ValueSpec(name="bad name", dtype="int8", shape=(3,))
