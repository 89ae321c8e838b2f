"""Issue 19, findings 11-13: programs written to split or stall the network are refused at
validation, quickly and with a typed error, whether built in memory or loaded from a file."""

from __future__ import annotations

import hashlib
import json
import struct
import time

import numpy as np
import pytest

import aivm_jax
from aivm_jax import ModelFileError, OpError, ProgramError, TamperedModelError
from aivm_jax.conformance import DATA_DIR
from aivm_jax.ops import (
    MAX_COMPILE_UNITS,
    MAX_NODES,
    MAX_ROW_BYTES,
    MAX_TENSOR_ELEMENTS,
    MAX_WINDOW_ELEMENTS,
    MAX_WORK_PER_ROW,
    reference,
)
from aivm_jax.program import Node, Program, ValueSpec, from_bytes
from aivm_jax.program._format import MAGIC
from aivm_jax.runtime import ResourceLimitError, check_resources, resource_estimate

FAST = 5.0  # seconds: a refusal must not compile, run or allocate anything big


def _program(nodes, inputs, output, params=None, out_dtype="int32", out_shape=None):
    """A program over ``nodes`` whose output spec is whatever the last node computes."""
    return Program(
        name="attack",
        inputs=tuple(ValueSpec(name=n, dtype=d, shape=s) for n, d, s in inputs),
        outputs=(ValueSpec(name=output, dtype=out_dtype, shape=out_shape or ()),),
        nodes=tuple(Node(op=op, inputs=tuple(i), output=o, attrs=a) for op, i, o, a in nodes),
        params=params or {},
    )


def _refused(build, error, match):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        build()
    assert time.perf_counter() - start < FAST


def _unvalidated_file_bytes(manifest: dict, params: dict[str, np.ndarray]) -> bytes:
    """`.aivm` bytes in canonical form with a correct checksum, written without `Program`'s checks:
    what an attacker can publish."""
    entries, blobs, offset = [], [], 0
    for name in sorted(params):
        data = np.ascontiguousarray(params[name]).tobytes()
        entries.append(
            {
                "name": name,
                "dtype": params[name].dtype.name,
                "shape": list(params[name].shape),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        blobs.append(data)
        offset += len(data)
    text = json.dumps({**manifest, "params": entries}, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<8sIQ", MAGIC, 1, len(text)) + text + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


LN_PARAMS = {"g": np.array([100], np.int32), "b": np.array([0], np.int32)}


# --------------------------------------------------------------------------- finding 11: rows that mix


def test_layer_norm_on_a_row_of_shape_empty_is_refused():
    # At batch 1 the row () is the shape (1,), D = 1 passes; at batch 3 the last axis is the batch.
    def build():
        _program([("layer_norm", ("x", "g", "b"), "y", {"eps": 0})], [("x", "int32", ())], "y", LN_PARAMS)

    _refused(build, OpError, "batch axis")


def test_iota_on_a_row_of_shape_empty_is_refused():
    _refused(
        lambda: _program([("iota", ("x",), "y", {})], [("x", "int8", ())], "y"),
        OpError,
        "iota input must have an axis besides the batch axis",
    )


@pytest.mark.parametrize(
    "op, inputs, attrs, params",
    [
        ("bias_add", ("x", "b"), {}, {"b": np.array([1], np.int32)}),
        (
            "requantize",
            ("x", "m", "s"),
            {"out_dtype": "int32"},
            {"m": np.array([3], np.int32), "s": np.array([1], np.int32)},
        ),
        (
            "add",
            ("x", "x", "m", "one", "s"),
            {"out_dtype": "int32"},
            {"m": np.array([3], np.int32), "one": np.int32(1).reshape(()), "s": np.int32(0).reshape(())},
        ),
    ],
)
def test_per_channel_parameters_on_a_row_of_shape_empty_are_refused(op, inputs, attrs, params):
    _refused(
        lambda: _program([(op, inputs, "y", attrs)], [("x", "int32", ())], "y", params),
        OpError,
        "batch axis",
    )


def test_per_tensor_ops_on_a_row_of_shape_empty_still_run_row_by_row():
    # Elementwise ops with scalar parameters do not reach the batch axis: allowed, and equal alone.
    program = _program(
        [("requantize", ("x", "m", "s"), "y", {"out_dtype": "int8"})],
        [("x", "int32", ())],
        "y",
        {"m": np.int32(3).reshape(()), "s": np.int32(1).reshape(())},
        out_dtype="int8",
    )
    x = np.array([5, 100, -7, 2**31 - 1], np.int32)
    batched = aivm_jax.infer(program, x)
    assert batched.row_hashes == tuple(aivm_jax.infer(program, x[i : i + 1]).row_hashes[0] for i in range(4))


def test_the_tampered_file_of_finding_11_is_refused_on_load(tmp_path):
    manifest = {
        "opset": 1,
        "name": "attack",
        "inputs": [{"name": "x", "dtype": "int32", "shape": []}],
        "outputs": [{"name": "y", "dtype": "int32", "shape": []}],
        "nodes": [{"op": "layer_norm", "inputs": ["x", "g", "b"], "output": "y", "attrs": {"eps": 0}}],
        "metadata": {},
    }
    data = _unvalidated_file_bytes(manifest, LN_PARAMS)
    with pytest.raises(TamperedModelError, match="invalid program.*batch axis"):
        from_bytes(data)
    path = tmp_path / "attack.aivm"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="batch axis"):
        aivm_jax.infer(path, np.array([5, 100, -7], np.int32))


def test_the_file_writer_above_writes_what_save_writes():
    # The helper's bytes are the real format: a valid program's file comes out identical.
    program = aivm_jax.load(DATA_DIR / "digits-mlp.aivm")
    manifest = json.loads(aivm_jax.program.to_bytes(program)[20:].split(b"}]}", 1)[0] + b"}]}")
    manifest.pop("params")
    assert _unvalidated_file_bytes(manifest, dict(program.params)) == aivm_jax.program.to_bytes(program)


# --------------------------------------------------------------------------- finding 12: a wrap the reference lacks


def test_an_avg_pool_window_past_the_exactness_bound_is_refused():
    # 2900 x 2900 = 8,410,000 elements: XLA's int32 2S + n wrapped there (all 127s gave -128).
    def build():
        _program(
            [
                (
                    "avg_pool",
                    ("x",),
                    "y",
                    {"window": (2900, 2900), "strides": (1, 1), "padding": ((0, 0), (0, 0))},
                )
            ],
            [("x", "int8", (2900, 2900, 1))],
            "y",
            out_dtype="int8",
            out_shape=(1, 1, 1),
        )

    _refused(build, OpError, f"more than the {MAX_WINDOW_ELEMENTS} a window may hold")


def test_the_largest_window_keeps_every_engine_exact():
    # All 127s and all -128s over the largest allowed window: 2S + n at its extremes.
    side = int(MAX_WINDOW_ELEMENTS**0.5)
    attrs = {"window": (side, side), "strides": (1, 1), "padding": ((0, 0), (0, 0))}
    program = _program(
        [("avg_pool", ("x",), "y", attrs)],
        [("x", "int8", (side, side, 2))],
        "y",
        out_dtype="int8",
        out_shape=(1, 1, 2),
    )
    x = np.stack([np.full((side, side, 2), 127, np.int8), np.full((side, side, 2), -128, np.int8)])
    for mode in ("jit", "eager", "reference"):
        np.testing.assert_array_equal(aivm_jax.infer(program, x, mode=mode).outputs[:, 0, 0, 0], [127, -128])


# --------------------------------------------------------------------------- finding 13: a compile that never ends


def test_the_avg_pool_that_stalled_the_compiler_is_refused():
    # 1x1x1 input, 2049 x 2049 window, padding 2048: XLA folded the counts, W**4 work.
    def build():
        _program(
            [
                (
                    "avg_pool",
                    ("x",),
                    "y",
                    {"window": (2049, 2049), "strides": (1, 1), "padding": ((2048, 2048), (2048, 2048))},
                )
            ],
            [("x", "int8", (1, 1, 1))],
            "y",
            out_dtype="int8",
            out_shape=(2049, 2049, 1),
        )

    _refused(build, OpError, "window")


def test_a_wide_padded_pool_within_the_bounds_compiles_fast_and_exactly():
    # The in-bounds counts are computed per axis now, not by a reduce_window over ones that XLA
    # constant-folds (O(Ho Wo kh kw)); 64 x 64 window, padding 63 on a 1x1 input.
    attrs = {"window": (64, 64), "strides": (1, 1), "padding": ((63, 63), (63, 63))}
    program = _program(
        [("avg_pool", ("x",), "y", attrs)],
        [("x", "int8", (1, 1, 3))],
        "y",
        out_dtype="int8",
        out_shape=(64, 64, 3),
    )
    x = np.array([[[[127, -128, -3]]], [[[1, 2, -1]]]], np.int8)
    start = time.perf_counter()
    got = aivm_jax.infer(program, x).outputs
    assert time.perf_counter() - start < 30
    np.testing.assert_array_equal(got, reference.avg_pool(x, **attrs))


def test_conv2d_padding_past_the_kernel_is_refused():
    # Padding of 10**6 failed only on memory: nodes split between a result and an error by RAM.
    def build():
        _program(
            [("conv2d", ("x", "w"), "y", {"strides": (1, 1), "padding": ((10**6, 10**6), (0, 0))})],
            [("x", "int8", (4, 4, 1))],
            "y",
            {"w": np.ones((3, 3, 1, 1), np.int8)},
            out_shape=(2000002, 2, 1),
        )

    _refused(build, OpError, "must be smaller than the window 3")


def test_too_many_nodes_are_refused_before_any_is_checked():
    nodes = [("relu", ("x" if i == 0 else f"v{i - 1}",), f"v{i}", {}) for i in range(MAX_NODES + 1)]
    _refused(
        lambda: _program(nodes, [("x", "int8", (4,))], f"v{MAX_NODES}", out_dtype="int8", out_shape=(4,)),
        ProgramError,
        f"more than the {MAX_NODES}",
    )


def test_layer_norm_chains_over_the_compile_bound_are_refused():
    # 200 layer norms took 141 s to compile on XLA's path; 64 units each.
    n = MAX_COMPILE_UNITS // 64 + 1
    params = {"g": np.full((8,), 100, np.int32), "b": np.zeros((8,), np.int32)}
    nodes = [
        ("layer_norm", ("x" if i == 0 else f"v{i - 1}", "g", "b"), f"v{i}", {"eps": 1}) for i in range(n)
    ]
    _refused(
        lambda: _program(nodes, [("x", "int32", (8,))], f"v{n - 1}", params, out_shape=(8,)),
        ProgramError,
        "compile units",
    )


def test_too_large_tensors_are_refused():
    too_many = MAX_TENSOR_ELEMENTS + 1
    _refused(lambda: ValueSpec(name="x", dtype="int8", shape=(too_many,)), ProgramError, "bounds")
    # An output row over the bound: (2**14, 1) x (1, 2**13) -> 2**27 elements per row.
    _refused(
        lambda: _program(
            [("matmul", ("x", "w"), "y", {})],
            [("x", "int8", (2**14, 1))],
            "y",
            {"w": np.ones((1, 2**13), np.int8)},
            out_shape=(1,),  # the node is refused before the output spec is compared
        ),
        OpError,
        "elements per row",
    )
    # An empty parameter (gather from a table of 0 rows had no reference answer).
    _refused(
        lambda: _program(
            [("gather", ("x", "t"), "y", {})], [("x", "int32", (3,))], "y", {"t": np.zeros((0, 4), np.int8)}
        ),
        ProgramError,
        "empty axis",
    )


def test_work_over_the_bound_is_refused():
    # A 256 x 256 window (allowed) slid over a 4096 x 4096 x 4 row: 2**41.8 window elements.
    attrs = {"window": (256, 256), "strides": (1, 1), "padding": ((0, 0), (0, 0))}
    _refused(
        lambda: _program(
            [("max_pool", ("x",), "y", attrs)],
            [("x", "int8", (4096, 4096, 4))],
            "y",
            out_dtype="int8",
            out_shape=(3841, 3841, 4),
        ),
        ProgramError,
        "work per row",
    )


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"shape": (2**40, 2**40)}, "shape must be"),
        ({"shape": (1,) * 8}, "shape must be"),
    ],
)
def test_huge_or_deep_attributes_are_refused(attrs, message):
    _refused(
        lambda: _program([("reshape", ("x",), "y", attrs)], [("x", "int8", (4,))], "y", out_dtype="int8"),
        OpError,
        message,
    )


# --------------------------------------------------------------------------- resource estimates


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_the_zoo_is_well_within_every_bound(name):
    program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
    row = program.resource_estimate()
    assert row.work * 1000 < MAX_WORK_PER_ROW
    assert row.peak_activation_bytes * 1000 < MAX_ROW_BYTES
    assert row.compile_units * 10 < MAX_COMPILE_UNITS
    assert row.nodes == len(program.nodes)


def test_the_estimate_of_a_small_program_by_hand():
    # x int8 (4,) -> matmul (4, 3) -> int32 (3,) -> requantize -> int8 (3,)
    program = _program(
        [
            ("matmul", ("x", "w"), "h", {}),
            ("requantize", ("h", "m", "s"), "y", {"out_dtype": "int8"}),
        ],
        [("x", "int8", (2, 4))],
        "y",
        {"w": np.ones((4, 3), np.int8), "m": np.int32(1).reshape(()), "s": np.int32(0).reshape(())},
        out_dtype="int8",
        out_shape=(2, 3),
    )
    one = resource_estimate(program)
    assert one.work == 2 * 3 * 4 + 2 * 3  # the product's multiply-adds, one step per rescaled element
    # live at the requantize: h (24 bytes) and y (6), x freed after the matmul; plus 16 bytes of
    # int64 temporaries per element of h
    assert one.peak_activation_bytes == max(8 + 24 + 6 * 4, 24 + 6 + 16 * 6)
    assert one.param_bytes == 12 + 4 + 4
    assert one.compile_units == 2 + 2
    many = program.resource_estimate(64)
    assert (many.work, many.peak_activation_bytes) == (64 * one.work, 64 * one.peak_activation_bytes)
    assert (many.param_bytes, many.compile_units) == (one.param_bytes, one.compile_units)
    assert many.to_json()["total_bytes"] == many.peak_activation_bytes + many.param_bytes


def test_a_node_refuses_a_request_over_its_budget_with_a_typed_error():
    program = aivm_jax.load(DATA_DIR / "digits-cnn.aivm")
    fits = check_resources(program, 8, max_bytes=10**9, max_work=10**9)
    assert fits.batch == 8
    with pytest.raises(ResourceLimitError, match="work"):
        check_resources(program, 10**6, max_work=10**9)
    with pytest.raises(ResourceLimitError, match="bytes"):
        check_resources(program, 10**6, max_bytes=10**9)
    with pytest.raises(ProgramError, match="batch"):
        resource_estimate(program, 0)


def test_dynamic_lengths_are_estimated_at_the_given_shape():
    program = Program(
        name="dyn",
        inputs=(ValueSpec(name="x", dtype="int32", shape=(16, 8), dynamic=(0,)),),
        outputs=(ValueSpec(name="y", dtype="int32", shape=(16, 8), dynamic=(0,)),),
        nodes=(Node(op="layer_norm", inputs=("x", "g", "b"), output="y", attrs={"eps": 1}),),
        params={"g": np.full((8,), 7, np.int32), "b": np.zeros((8,), np.int32)},
    )
    longest, short = program.resource_estimate(), program.resource_estimate(1, {"x": (4, 8)})
    assert longest.work == 4 * short.work
    with pytest.raises(ProgramError, match="row shape"):
        program.resource_estimate(1, {"x": (17, 8)})
