"""The circuit export: EZKL's witness equals `infer` bit for bit, and inexact programs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aivm_jax
from aivm_jax import Node, Program, UnsupportedForProofError, ValueSpec
from aivm_jax.proofs import build_circuit, field_element, program_bounds
from aivm_jax.proofs._ezkl import call
from aivm_jax.proofs._rewrite import circuit_nodes


def witness_outputs(files, x_row: np.ndarray, tmp_path) -> list[str]:
    (tmp_path / "in.json").write_text(json.dumps({"input_data": [x_row.reshape(-1).tolist()]}))
    call("gen_witness", str(tmp_path / "in.json"), str(files.compiled), str(tmp_path / "w.json"))
    return json.loads((tmp_path / "w.json").read_text())["outputs"][0]


def assert_witnesses_equal_infer(program, x: np.ndarray, tmp_path, distinct: int) -> None:
    """EZKL's witness of each row of ``x`` equals `infer`, bit for bit, and the rows'
    outputs take more than ``distinct`` values (the inputs really differ)."""
    files = build_circuit(program, tmp_path / "circuit")
    expected = aivm_jax.infer(program, x).outputs
    for row, want in zip(x, expected):
        assert witness_outputs(files, row, tmp_path) == [field_element(v) for v in want.reshape(-1).tolist()]
    assert len({tuple(r.reshape(-1)) for r in expected}) > distinct


def edge_inputs(program, n_random: int, seed: int = 0) -> np.ndarray:
    """Held-out-like pixels, all-zero, all-max pixel, and rows over the whole int8 range."""
    rng = np.random.default_rng(seed)
    shape = program.inputs[0].shape
    rows = [
        np.zeros(shape),
        np.full(shape, 16),
        np.full(shape, 127),
        np.full(shape, -128),
        rng.integers(0, 17, shape),
        *[rng.integers(-128, 128, shape) for _ in range(n_random)],
    ]
    return np.stack(rows).astype(np.int8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_witness_equals_infer_on_20_inputs_with_range_edges(programs, name, tmp_path):
    program = programs[name]
    x = edge_inputs(program, 15)
    assert len(x) >= 20
    assert_witnesses_equal_infer(program, x, tmp_path, distinct=10)


@pytest.mark.slow
def test_other_ops_export_exactly(tmp_path):
    rng = np.random.default_rng(3)
    table = rng.integers(-128, 128, 256).astype(np.int8)
    program = Program(
        name="ops",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(2, 3)),),
        outputs=(ValueSpec(name="y", dtype="int8", shape=(12,)),),
        nodes=(
            Node(op="table", inputs=("x", "t"), output="a"),
            Node(op="transpose", inputs=("a",), output="b", attrs={"perm": (1, 0)}),
            Node(op="reshape", inputs=("x",), output="c", attrs={"shape": (3, 2)}),
            Node(op="concat", inputs=("b", "c"), output="d", attrs={"axis": 1}),
            Node(op="relu", inputs=("d",), output="e"),
            Node(op="flatten", inputs=("e",), output="y"),
        ),
        params={"t": table},
    )
    files = build_circuit(program, tmp_path / "circuit")
    for row in [
        np.array([[-128, 127, 0], [1, -1, 5]], np.int8),
        rng.integers(-128, 128, (2, 3)).astype(np.int8),
    ]:
        want = aivm_jax.infer(program, row[None]).outputs[0]
        assert witness_outputs(files, row, tmp_path) == [field_element(v) for v in want.tolist()]


def test_bounds_follow_the_weights(programs):
    bounds = program_bounds(programs["digits-mlp"])
    w = programs["digits-mlp"].params["l0.kernel"].astype(np.int64)
    assert bounds["x"] == 128
    assert bounds["l0.acc"] == 128 * int(np.abs(w).sum(axis=0).max())
    assert bounds["y"] <= 128


def _one_op_program(node: Node, params, out_dtype="int32", shape=(2,)):
    return Program(
        name="p",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(2,)),),
        outputs=(ValueSpec(name=node.output, dtype=out_dtype, shape=shape),),
        nodes=(node,),
        params=params,
    )


def test_programs_that_could_wrap_are_refused(tmp_path):
    program = Program(
        name="wraps",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(2,)),),
        outputs=(ValueSpec(name="y", dtype="int32", shape=(2,)),),
        nodes=(
            Node(op="matmul", inputs=("x", "w"), output="a"),
            Node(op="bias_add", inputs=("a", "b"), output="y"),
        ),
        params={"w": np.ones((2, 2), np.int8), "b": np.array([2**31 - 1, 0], np.int32)},
    )
    with pytest.raises(UnsupportedForProofError, match="wrap"):
        build_circuit(program, tmp_path)


def test_ops_without_an_exact_export_are_refused(tmp_path):
    program = _one_op_program(Node(op="argmax", inputs=("x",), output="y"), {}, shape=())
    with pytest.raises(UnsupportedForProofError, match="argmax"):
        build_circuit(program, tmp_path)


def test_transformer_ops_are_refused_before_any_bound_is_guessed(tmp_path):
    table = np.arange(-128, 128, dtype=np.int32) * 1000
    program = Program(
        name="norm",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(4,)),),
        outputs=(ValueSpec(name="y", dtype="int32", shape=(4,)),),
        nodes=(
            Node(op="table", inputs=("x", "t"), output="wide"),
            Node(op="layer_norm", inputs=("wide", "g", "b"), output="y", attrs={"eps": 0}),
        ),
        params={"t": table, "g": np.full(4, 64, np.int32), "b": np.zeros(4, np.int32)},
    )
    with pytest.raises(UnsupportedForProofError, match="layer_norm"):
        build_circuit(program, tmp_path)


@pytest.mark.slow
def test_strided_padded_convs_and_overlapping_pools_export_exactly(tmp_path):
    """A conv with strides and padding, a 2x2 max pool moved before its requantize, an
    overlapping average pool (the 0/1-convolution path) and a bias folded into the rounding offset."""
    rng = np.random.default_rng(7)
    program = Program(
        name="strided",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(7, 7, 2)),),
        outputs=(ValueSpec(name="y", dtype="int8", shape=(1, 2, 3)),),
        nodes=(
            Node(
                op="conv2d",
                inputs=("x", "w"),
                output="c",
                attrs={"strides": (2, 2), "padding": ((1, 0), (0, 1))},
            ),
            Node(op="bias_add", inputs=("c", "b"), output="cb"),
            Node(op="requantize", inputs=("cb", "m", "s"), output="q", attrs={"out_dtype": "int8"}),
            Node(op="relu", inputs=("q",), output="r"),
            Node(
                op="max_pool",
                inputs=("r",),
                output="p",
                attrs={"window": (2, 2), "strides": (1, 1), "padding": ((0, 0), (0, 0))},
            ),
            Node(
                op="avg_pool",
                inputs=("p",),
                output="y",
                attrs={"window": (2, 2), "strides": (1, 1), "padding": ((0, 0), (0, 0))},
            ),
        ),
        params={
            "w": rng.integers(-128, 128, (3, 2, 2, 3)).astype(np.int8),
            "b": rng.integers(-(2**12), 2**12, 3).astype(np.int32),
            "m": np.array([23000, 17000, 30000], np.int32),
            "s": np.array([13, 12, 14], np.int32),
        },
    )
    assert [n.op for n in circuit_nodes(program)][:2] == ["conv2d", "max_pool"]
    assert_witnesses_equal_infer(program, edge_inputs(program, 8, seed=2), tmp_path, distinct=3)


@pytest.mark.slow
@pytest.mark.parametrize("window, strides", [((3, 3), (2, 2)), ((1, 3), (1, 1)), ((2, 1), (1, 2))])
def test_max_pools_of_any_window_export_exactly(window, strides, tmp_path):
    """The max tree (``a + relu(b - a)``) over 9, 3 and 2 taps: odd counts carry a tap up a level."""
    program = Program(
        name="pool",
        inputs=(ValueSpec(name="x", dtype="int8", shape=(5, 6, 2)),),
        outputs=(
            ValueSpec(
                name="y",
                dtype="int8",
                shape=((5 - window[0]) // strides[0] + 1, (6 - window[1]) // strides[1] + 1, 2),
            ),
        ),
        nodes=(
            Node(
                op="max_pool",
                inputs=("x",),
                output="y",
                attrs={"window": window, "strides": strides, "padding": ((0, 0), (0, 0))},
            ),
        ),
        params={},
    )
    assert_witnesses_equal_infer(program, edge_inputs(program, 6, seed=3), tmp_path, distinct=3)
