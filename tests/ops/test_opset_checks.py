"""The opset's checks: malformed op applications are refused before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax import OpError
from aivm_jax.ops import OPSET, OPSET_VERSION, TensorType, check_node, node_cost


def t(dtype, *shape):
    return TensorType(dtype, tuple(shape))


def test_output_type_is_inferred():
    out, attrs = check_node(
        "conv2d",
        [t("int8", 1, 8, 8, 1), t("int8", 3, 3, 1, 4)],
        ["act", "param"],
        {"strides": [2, 2], "padding": [[1, 1], [1, 1]]},
    )
    assert out == t("int32", 1, 4, 4, 4)
    assert attrs == {"padding": ((1, 1), (1, 1)), "strides": (2, 2)}


def test_defaults_are_filled_in():
    _, attrs = check_node("argmax", [t("int8", 1, 5)], ["act"], {})
    assert attrs == {"axis": -1}


@pytest.mark.parametrize(
    "op, types, kinds, attrs, message",
    [
        ("conv3d", [t("int8", 1, 3)], ["act"], {}, "unknown op"),
        ("matmul", [t("int32", 1, 3), t("int8", 3, 2)], ["act", "param"], {}, "dtype int8"),
        ("matmul", [t("int8", 1, 4), t("int8", 3, 2)], ["act", "param"], {}, "does not contract"),
        ("matmul", [t("int8", 1, 3), t("int8", 1, 3)], ["act", "act"], {}, "operands must be"),
        (
            "conv2d",
            [t("int8", 1, 8, 8, 2), t("int8", 3, 3, 1, 4)],
            ["act", "param"],
            {"strides": (1, 1), "padding": ((0, 0), (0, 0))},
            "channels",
        ),
        (
            "conv2d",
            [t("int8", 1, 8, 8, 1), t("int8", 3, 3, 1, 4)],
            ["act", "param"],
            {"strides": (0, 1), "padding": ((0, 0), (0, 0))},
            "strides",
        ),
        (
            "conv2d",
            [t("int8", 1, 8, 8, 1), t("int8", 3, 3, 1, 4)],
            ["act", "param"],
            {"strides": (1, 1)},
            "missing attribute",
        ),
        (
            "requantize",
            [t("int32", 1, 4), t("int32", 3), t("int32", 3)],
            ["act", "param", "param"],
            {"out_dtype": "int8"},
            "multiplier",
        ),
        (
            "requantize",
            [t("int32", 1, 4), t("int32"), t("int32")],
            ["act", "param", "param"],
            {"out_dtype": "float32"},
            "out_dtype",
        ),
        ("relu", [t("int8", 1, 4)], ["act"], {"alpha": 1}, "unknown attribute"),
        ("table", [t("int8", 1, 4), t("int8", 255)], ["act", "param"], {}, "256"),
        (
            "max_pool",
            [t("int8", 1, 4, 4, 1)],
            ["act"],
            {"window": (2, 2), "strides": (1, 1), "padding": ((2, 0), (0, 0))},
            "smaller than the window",
        ),
        ("reshape", [t("int8", 1, 4, 3)], ["act"], {"shape": (5,)}, "cannot reshape"),
        ("transpose", [t("int8", 1, 4, 3)], ["act"], {"perm": (0, 0)}, "permutation"),
        ("concat", [t("int8", 1, 4), t("int32", 1, 4)], ["act", "act"], {"axis": 1}, "differ"),
        ("concat", [t("int8", 1, 4), t("int8", 1, 4)], ["act", "act"], {"axis": 0}, "non-batch axis"),
        ("argmax", [t("int8", 2, 4)], ["act"], {"axis": 0}, "non-batch axis"),
        ("argmax", [t("int8", 1)], ["act"], {"axis": -1}, "non-batch axis"),
    ],
)
def test_bad_op_applications_are_refused(op, types, kinds, attrs, message):
    with pytest.raises(OpError, match=message):
        check_node(op, types, kinds, attrs)


def test_shift_outside_0_62_is_refused():
    types = [t("int32", 1, 2), t("int32", 2), t("int32", 2)]
    with pytest.raises(OpError, match=r"\[0, 62\]"):
        check_node(
            "requantize",
            types,
            ["act", "param", "param"],
            {"out_dtype": "int8"},
            [np.array([1, 1], np.int32), np.array([3, 63], np.int32)],
        )


W = {"strides": (1, 1), "padding": ((0, 0), (0, 0))}


@pytest.mark.parametrize(
    "op, types, kinds, attrs, message",
    [  # ops that reduce over or index the last axis, given a row of shape (): rank 1
        (
            "layer_norm",
            [t("int32", 1), t("int32", 1), t("int32", 1)],
            ["act", "param", "param"],
            {"eps": 0},
            "",
        ),
        ("iota", [t("int8", 1)], ["act"], {}, ""),
        ("bias_add", [t("int32", 1), t("int32", 1)], ["act", "param"], {}, ""),
        (
            "requantize",
            [t("int32", 1), t("int32", 1), t("int32", 1)],
            ["act", "param", "param"],
            {"out_dtype": "int8"},
            "per-channel",
        ),
        (
            "add",
            [t("int32", 1), t("int32", 1), t("int32"), t("int32", 1), t("int32")],
            ["act", "act", "param", "param", "param"],
            {"out_dtype": "int8"},
            "per-channel y multiplier",
        ),
    ],
)
def test_no_op_reaches_the_batch_axis_by_rank(op, types, kinds, attrs, message):
    with pytest.raises(OpError, match=f"{message}.*batch axis"):
        check_node(op, types, kinds, attrs)


@pytest.mark.parametrize(
    "op, types, kinds, attrs, message",
    [
        ("avg_pool", [t("int8", 1, 300, 300, 1)], ["act"], {"window": (257, 256), **W}, "65536"),
        (
            "max_pool",
            [t("int8", 1, 4, 4, 1)],
            ["act"],
            {"window": (2, 2), "strides": (2**25, 1), "padding": ((0, 0), (0, 0))},
            "strides",
        ),
        (
            "conv2d",
            [t("int8", 1, 4, 4, 1), t("int8", 3, 3, 1, 1)],
            ["act", "param"],
            {"strides": (1, 1), "padding": ((3, 0), (0, 0))},
            "smaller than the window 3",
        ),
        ("relu", [t("int8", 1, 0)], ["act"], {}, "empty axis"),
        ("relu", [t("int8", 1, 2**26 + 1)], ["act"], {}, "elements per row"),
        ("relu", [t("int8", *([1] * 9))], ["act"], {}, "axes"),
        ("gather", [t("int32", 1, 3), t("int8", 0, 4)], ["act", "param"], {}, "empty axis"),
        ("reshape", [t("int8", 1, 4)], ["act"], {"shape": (2**25, -1)}, "shape must be"),
        ("transpose", [t("int8", 1, 4, 3)], ["act"], {"perm": (True, False)}, "permutation"),
    ],
)
def test_bounds_are_refused(op, types, kinds, attrs, message):
    with pytest.raises(OpError, match=message):
        check_node(op, types, kinds, attrs)


def test_node_costs():
    out, attrs = check_node("conv2d", [t("int8", 1, 8, 8, 2), t("int8", 3, 3, 2, 4)], ["act", "param"], W)
    cost = node_cost("conv2d", [t("int8", 1, 8, 8, 2), t("int8", 3, 3, 2, 4)], attrs, out)
    assert cost.work == 6 * 6 * 4 * (3 * 3 * 2)  # one multiply-add per output and kernel element
    ln = [t("int32", 1, 5, 16), t("int32", 16), t("int32", 16)]
    out, attrs = check_node("layer_norm", ln, ["act", "param", "param"], {"eps": 1})
    assert node_cost("layer_norm", ln, attrs, out).compile_units == OPSET["layer_norm"].compile_units == 64
    assert all(op.compile_units >= 1 for op in OPSET.values())


def test_opset_version_is_one():
    assert OPSET_VERSION == 1
