"""Each ONNX converter on the smallest graph that exercises it, plus the importer's checks.

Graphs are written with ``onnx.helper``; the float reference is ``onnx.reference``
or onnxruntime (the importer's own fidelity report), the bar a per-row cosine.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.quant import UnsupportedOnnxError, import_onnx  # noqa: E402
from aivm_jax.quant.onnx import OnnxImportError, converters  # noqa: E402
from aivm_jax.quant.onnx._fidelity import run_float  # noqa: E402
from aivm_jax.runtime._host import decode_scale  # noqa: E402

RNG = np.random.default_rng(0)  # reseeded for each test by tests/quant/conftest.py


def _f32(v):
    v = np.asarray(v)
    return v if v.dtype.kind == "i" else v.astype(np.float32)


def _model(nodes, in_shape, out_shape, inits=(), opset=13, in_name="x", out_name="y"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=[numpy_helper.from_array(_f32(v), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _w(*shape):
    return RNG.normal(size=shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1)


def _calib(*shape, n=200):
    return RNG.normal(size=(n, *shape)).astype(np.float32)


def _bn(name, c):
    return [
        (f"{name}.g", RNG.uniform(0.5, 1.5, c)),
        (f"{name}.b", RNG.normal(size=c) * 0.1),
        (f"{name}.m", RNG.normal(size=c) * 0.1),
        (f"{name}.v", RNG.uniform(0.5, 1.5, c)),
    ]


CASES = {
    "gemm_transB_alpha_beta": lambda: _model(
        [helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0)],
        [16],
        [8],
        [("W", _w(8, 16)), ("C", _w(8))],
    ),
    "matmul_const_then_add_bias": lambda: _model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [16],
        [8],
        [("W", _w(16, 8)), ("b", _w(8))],
    ),
    "gemm_relu_gemm": lambda: _model(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
        ],
        [16],
        [4],
        [("W1", _w(12, 16)), ("b1", _w(12)), ("W2", _w(4, 12)), ("b2", _w(4))],
    ),
    "conv_strided_padded": lambda: _model(
        [
            helper.make_node(
                "Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[2, 1]
            )
        ],
        [3, 7, 6],
        [4, 4, 6],
        [("W", _w(4, 3, 3, 3)), ("B", _w(4))],
    ),
    "conv_grouped_no_bias": lambda: _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)],
        [4, 5, 5],
        [6, 5, 5],
        [("W", _w(6, 2, 3, 3))],
    ),
    "conv_depthwise_batchnorm_folded": lambda: _model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
            helper.make_node("BatchNormalization", ["c", "bn.g", "bn.b", "bn.m", "bn.v"], ["y"]),
        ],
        [4, 5, 5],
        [4, 5, 5],
        [("W", _w(4, 1, 3, 3)), ("B", _w(4)), *_bn("bn", 4)],
    ),
    "batchnorm_standalone_4d": lambda: _model(
        [helper.make_node("BatchNormalization", ["x", "bn.g", "bn.b", "bn.m", "bn.v"], ["y"], epsilon=1e-3)],
        [3, 4, 4],
        [3, 4, 4],
        _bn("bn", 3),
    ),
    "gemm_batchnorm_relu_2d": lambda: _model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
            helper.make_node("BatchNormalization", ["h", "bn.g", "bn.b", "bn.m", "bn.v"], ["n"]),
            helper.make_node("Relu", ["n"], ["y"]),
        ],
        [10],
        [6],
        [("W", _w(6, 10)), ("b", _w(6)), *_bn("bn", 6)],
    ),
    "residual_add_and_sub_constant": lambda: _model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("Add", ["x", "c"], ["s"]),
            helper.make_node("Sub", ["s", "k"], ["y"]),
        ],
        [3, 4, 4],
        [3, 4, 4],
        [("W", _w(3, 3, 1, 1)), ("B", _w(3)), ("k", _w(1, 3, 1, 1))],
    ),
    "add_scalar_to_int8": lambda: _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "k"], ["y"])],
        [5],
        [5],
        [("k", np.float32(0.25))],
    ),
    "clip_relu6_and_general": lambda: _model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("Clip", ["c", "zero", "six"], ["r6"]),
            helper.make_node("Clip", ["r6", "lo", "hi"], ["y"]),
        ],
        [2, 3, 3],
        [4, 3, 3],
        [("W", _w(4, 2, 1, 1) * 8), ("B", _w(4)), ("zero", 0.0), ("six", 6.0), ("lo", 0.5), ("hi", 4.0)],
    ),
    "hardsigmoid_times_x_is_hardswish": lambda: _model(  # opset 13 has no HardSwish
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("HardSigmoid", ["c"], ["hs"], alpha=1.0 / 6.0, beta=0.5),
            helper.make_node("Mul", ["hs", "c"], ["y"]),
        ],
        [2, 3, 3],
        [4, 3, 3],
        [("W", _w(4, 2, 1, 1) * 4), ("B", _w(4))],
    ),
    "clip_negative_min": lambda: _model(
        [helper.make_node("Gemm", ["x", "W"], ["h"]), helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
        [6],
        [6],
        [("W", _w(6, 6) * 3), ("lo", -1.0), ("hi", 1.5)],
    ),
    "maxpool_padded": lambda: _model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        [2, 6, 6],
        [2, 3, 3],
    ),
    "averagepool_excluding_pads": lambda: _model(
        [
            helper.make_node(
                "AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 0, 0]
            )
        ],
        [2, 4, 4],
        [2, 4, 4],
    ),
    "global_average_pool_flatten_gemm": lambda: _model(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1),
        ],
        [4, 3, 3],
        [5],
        [("W", _w(5, 4)), ("b", _w(5))],
    ),
    "reduce_mean_keepdims0_opset13": lambda: _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], [3, 4, 4], [3]
    ),
    "reduce_mean_axes_input_opset18": lambda: _model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)],
        [3, 4, 4],
        [3, 1, 1],
        [("axes", np.array([-1, -2], np.int64))],
        opset=18,
    ),
    "relu6_after_maxpool_clips": lambda: _model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Clip", ["p", "lo", "hi"], ["y"]),
        ],
        [3, 4, 4],
        [4, 2, 2],
        [("W", 8 * _w(4, 3, 1, 1)), ("lo", np.float32(0)), ("hi", np.float32(6))],
    ),
    "flatten_after_conv": lambda: _model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("Flatten", ["c"], ["y"]),
        ],
        [2, 3, 3],
        [18],
        [("W", _w(2, 2, 1, 1))],
    ),
    "reshape_from_shape_chain_identity_dropout": lambda: _model(
        [
            helper.make_node("Identity", ["x"], ["i"]),
            helper.make_node("Dropout", ["i"], ["d"]),
            helper.make_node("Shape", ["d"], ["s"]),
            helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
            helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
            helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
            helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0),
            helper.make_node("Reshape", ["d", "target"], ["y"]),
        ],
        [2, 3, 4],
        [24],
        [("ax", np.array([0], np.int64)), ("rest", np.array([-1], np.int64))],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_tracks_the_float_graph(case):
    model = CASES[case]()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    program = import_onnx(model, _calib(*shape))
    report = program.metadata["onnx_fidelity"]
    out = report["outputs"]["y"]
    assert report["examples"] == 40 and report["held_out"]
    assert out["cosine_min_ppm"] >= 980_000, out
    assert out["cosine_mean_ppm"] >= 998_000, out
    # the program runs the same in every mode
    x = _calib(*shape, n=9)
    results = [aivm_jax.infer(program, x, mode=mode) for mode in ("jit", "eager", "reference")]
    assert len({r.output_hash for r in results}) == 1


def test_fidelity_runs_on_onnx_reference_without_onnxruntime(monkeypatch):
    """Without onnxruntime the float graph runs in ``onnx.reference``, to the same values."""
    pytest.importorskip("onnxruntime")
    model = CASES["gemm_transB_alpha_beta"]()
    x = _calib(16, n=7)
    with_ort, engine = run_float(model, {"x": x})
    assert engine.startswith("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    without, fallback = run_float(model, {"x": x})
    assert fallback.startswith("onnx.reference")
    np.testing.assert_allclose(without["y"], with_ort["y"], rtol=1e-5, atol=1e-5)
    program = import_onnx(model, _calib(16))
    assert program.metadata["onnx_fidelity"]["reference"].startswith("onnx.reference")


def test_batchnorm_after_conv_is_folded_and_named():
    program = import_onnx(CASES["conv_depthwise_batchnorm_folded"](), _calib(4, 5, 5))
    assert program.metadata["source"]["patterns"] == [
        {"pattern": "Conv+BatchNormalization", "nodes": ["Conv_0", "BatchNormalization_1"]}
    ]
    assert program.op_counts()["conv2d"] == 1 and "matmul" not in program.op_counts()


def test_hardsigmoid_times_its_input_becomes_one_hardswish_table():
    program = import_onnx(CASES["hardsigmoid_times_x_is_hardswish"](), _calib(2, 3, 3))
    assert [p["pattern"] for p in program.metadata["source"]["patterns"]] == ["HardSwish(HardSigmoid/Mul)"]
    assert program.op_counts()["table"] == 1 and "batch_matmul" not in program.op_counts()


def test_depthwise_conv_keeps_each_channels_resolution():
    """Channels whose ranges differ 200-fold ahead of a depthwise convolution: each gets its own
    int8 scale (one per tensor would leave the small ones about one level); the spatial mean and
    the int32 output keep them apart too."""
    gains = np.array([100.0, 1.0, 30.0, 0.5], np.float32).reshape(4, 1, 1, 1)
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "D"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
            helper.make_node("ReduceMean", ["d"], ["y"], axes=[2, 3], keepdims=0),
        ],
        [3, 5, 5],
        [4],
        [("W", _w(4, 3, 1, 1) * gains), ("D", _w(4, 1, 3, 3))],
    )
    program = import_onnx(model, _calib(3, 5, 5))
    x = _calib(3, 5, 5, n=20)
    want = run_float(model, {"x": x})[0]["y"]
    got = aivm_jax.infer(program, x).outputs * decode_scale(program.metadata["scales"]["y"])
    for c in range(4):  # every channel within 5 % of its own range (one int8 scale: about 100 %)
        assert np.abs(got[:, c] - want[:, c]).max() <= 0.05 * np.abs(want[:, c]).max(), c
    assert program.op_counts()["matmul"] == 1 and "avg_pool" not in program.op_counts()  # the exact mean


def test_shape_chain_folds_away():
    program = import_onnx(CASES["reshape_from_shape_chain_identity_dropout"](), _calib(2, 3, 4))
    assert program.op_counts() == {"reshape": 2}  # the reshape and the output copy
    assert program.metadata["source"]["folded_nodes"] >= 5


def test_every_converter_is_registered_for_opsets_13_to_20():
    table = converters()
    for op in ["Add", "AveragePool", "BatchNormalization", "Clip", "Conv", "Dropout", "Flatten", "Gemm"]:
        assert (13, 20) in table[op] or any(lo <= 13 and hi >= 20 for lo, hi in table[op]), op
    assert sorted(table["ReduceMean"]) == [(13, 17), (18, 20)]


def test_unsupported_ops_are_all_listed_before_any_work():
    model = _model(
        [
            helper.make_node("Softplus", ["x"], ["a"], name="first_softplus"),
            helper.make_node("Sin", ["a"], ["b"], name="the_sin"),
            helper.make_node("Softplus", ["b"], ["y"], name="second_softplus"),
        ],
        [4],
        [4],
    )
    # no calibration file exists: the op check comes first
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(model, "/nonexistent/calibration.npy")
    message = str(caught.value)
    assert "Sin, Softplus" in message
    for name in ("first_softplus", "the_sin", "second_softplus"):
        assert name in message
    assert len(caught.value.problems) == 3


def test_unsupported_forms_are_listed_together():
    model = _model(
        [
            helper.make_node(
                "Conv", ["x", "W"], ["c"], kernel_shape=[3, 3], dilations=[2, 2], name="dilated"
            ),
            helper.make_node(
                "AveragePool",
                ["c"],
                ["y"],
                kernel_shape=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
                name="avg",
            ),
        ],
        [2, 9, 9],
        [2, 6, 6],
        [("W", _w(2, 2, 3, 3))],
    )
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(model, _calib(2, 9, 9))
    assert [(op, name) for op, name, _ in caught.value.problems] == [
        ("Conv", "dilated"),
        ("AveragePool", "avg"),
    ]
    assert "dilations" in str(caught.value) and "count_include_pad" in str(caught.value)


def test_symbolic_dims_must_be_bound():
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(OnnxImportError, match="--dim"):
        import_onnx(model, _calib(3, 4, 5))
    with pytest.raises(OnnxImportError, match="not symbolic dims"):
        import_onnx(model, _calib(3, 4, 5), dims={"h": 4, "w": 5, "depth": 2})
    program = import_onnx(model, _calib(3, 4, 5), dims={"h": 4, "w": 5})
    assert program.inputs[0].shape == (3, 4, 5)


def test_opset_outside_13_to_20_is_refused():
    model = CASES["gemm_transB_alpha_beta"]()
    model.opset_import[0].version = 11
    with pytest.raises(OnnxImportError, match="opsets 13-20"):
        import_onnx(model, _calib(16))
