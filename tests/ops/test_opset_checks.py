"""The opset's checks: malformed op applications are refused before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax import OpError
from aivm_jax.ops import OPSET_VERSION, TensorType, check_node


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


def test_opset_version_is_one():
    assert OPSET_VERSION == 1
