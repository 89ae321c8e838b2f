"""The transformer converters of the ONNX importer, each on the smallest graph that exercises it.

Graphs are written with ``onnx.helper``; the float reference is onnxruntime (the
importer's own fidelity report, on held-out rows), the bar a per-row cosine.
Whole encoders exported by PyTorch are in ``test_onnx_encoder.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.quant import UnsupportedOnnxError, import_onnx  # noqa: E402
from aivm_jax.quant.onnx import converters  # noqa: E402

RNG = np.random.default_rng(0)  # reseeded for each test by tests/quant/conftest.py


T, D, H = 6, 8, 2
NEG = np.float32(np.finfo(np.float32).min)


def _init(name, value):
    value = np.asarray(value)
    return numpy_helper.from_array(value if value.dtype.kind in "ib" else value.astype(np.float32), name)


def _model(nodes, inputs, out_shape, inits=(), opset=13):
    """``inputs``: ``[(name, elem_type, row_shape)]``; one float output ``y``."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, ["batch", *row]) for n, t, row in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=[_init(k, v) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    return model


def _x(*row):
    return [("x", TensorProto.FLOAT, list(row))]


def _w(*shape):
    return RNG.normal(size=shape) / np.sqrt(shape[0])


def _n(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _layer_norm_chain(x, out, gamma="g", beta="b"):
    """What PyTorch writes for nn.LayerNorm below opset 17."""
    return [
        _n("ReduceMean", [x], ["m"], axes=[-1]),
        _n("Sub", [x, "m"], ["d"]),
        _n("Pow", ["d", "two"], ["p"]),
        _n("ReduceMean", ["p"], ["v"], axes=[-1]),
        _n("Add", ["v", "eps"], ["ve"]),
        _n("Sqrt", ["ve"], ["s"]),
        _n("Div", ["d", "s"], ["nrm"]),
        _n("Mul", ["nrm", gamma], ["sc"]),
        _n("Add", ["sc", beta], [out]),
    ]


_LN_INITS = [("two", np.float32(2.0)), ("eps", np.float32(1e-5)), ("g", 1 + 0.2 * _w(D)), ("b", 0.1 * _w(D))]


def _attention(mask_nodes, mask_value, causal_inits=()):
    """q = x Wq, k = x Wk, v = x Wv (heads), softmax(q k^T / sqrt(dh) + mask) v, merged."""
    dh = D // H
    nodes = []
    for part in "qkv":
        nodes += [
            _n("MatMul", ["x", f"W{part}"], [f"{part}0"]),
            _n("Reshape", [f"{part}0", "heads"], [f"{part}1"]),
        ]
    nodes += [
        _n("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        _n("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        _n("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        _n("MatMul", ["q", "kt"], ["s0"]),
        _n("Div", ["s0", "root"], ["s1"]),
        *mask_nodes,
        _n("Softmax", [mask_value], ["p"], axis=-1),
        _n("MatMul", ["p", "v"], ["c0"]),
        _n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        _n("Reshape", ["c1", "merged"], ["y"]),
    ]
    inits = [
        ("Wq", _w(D, D)),
        ("Wk", _w(D, D)),
        ("Wv", _w(D, D)),
        ("heads", np.array([0, T, H, dh], np.int64)),
        ("merged", np.array([0, T, D], np.int64)),
        ("root", np.float32(np.sqrt(dh))),
        *causal_inits,
    ]
    return nodes, inits


_ADDITIVE_MASK = [  # transformers' extended mask: (1 - m[:, None, None, :]) * finfo.min
    _n("Unsqueeze", ["attention_mask", "ax12"], ["m4"]),
    _n("Cast", ["m4"], ["mf"], to=TensorProto.FLOAT),
    _n("Sub", ["one", "mf"], ["inv"]),
    _n("Mul", ["inv", "neg"], ["bias"]),
    _n("Add", ["s1", "bias"], ["s2"]),
]
_MASK_INITS = [("ax12", np.array([1, 2], np.int64)), ("one", np.float32(1.0)), ("neg", NEG)]
_WHERE_MASK = [  # a boolean key mask applied with Where
    _n("Equal", ["attention_mask", "zero_i"], ["pad"]),
    _n("Unsqueeze", ["pad", "ax12"], ["pad4"]),
    _n("Where", ["pad4", "neg", "s1"], ["s2"]),
]
_CAUSAL_AND_KEY = [  # a causal mask combined with the key mask at run time (GPT-2 style)
    _n("Unsqueeze", ["attention_mask", "ax12"], ["m4"]),
    _n("Cast", ["m4"], ["mb"], to=TensorProto.BOOL),
    _n("And", ["mb", "tril"], ["keep"]),
    _n("Where", ["keep", "s1", "neg"], ["s2"]),
]
_TRIL = np.tril(np.ones((T, T), bool))[None, None]


def _masked(mask_nodes, extra_inits, opset=13):
    nodes, inits = _attention(mask_nodes, "s2")
    return _model(
        nodes,
        [("x", TensorProto.FLOAT, [T, D]), ("attention_mask", TensorProto.INT64, [T])],
        [T, D],
        inits + _MASK_INITS + list(extra_inits),
        opset,
    )


CASES = {
    "layer_normalization_opset17": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), _n("LayerNormalization", ["h", "g", "b"], ["y"], epsilon=1e-5)],
        _x(T, D),
        [T, D],
        [("W", _w(D, D)), ("g", 1 + 0.2 * _w(D)), ("b", 0.1 * _w(D))],
        opset=17,
    ),
    "layer_norm_chain_opset13": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), *_layer_norm_chain("h", "y")],
        _x(T, D),
        [T, D],
        [("W", _w(D, D)), *_LN_INITS],
    ),
    "gelu_erf_chain": lambda: _model(
        [
            _n("MatMul", ["x", "W"], ["h"]),
            _n("Div", ["h", "sqrt2"], ["hd"]),
            _n("Erf", ["hd"], ["e"]),
            _n("Add", ["e", "one"], ["e1"]),
            _n("Mul", ["h", "e1"], ["he"]),
            _n("Mul", ["he", "half"], ["y"]),
        ],
        _x(D),
        [16],
        [
            ("W", _w(D, 16)),
            ("sqrt2", np.float32(np.sqrt(2))),
            ("one", np.float32(1)),
            ("half", np.float32(0.5)),
        ],
    ),
    "gelu_fused_opset20": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), _n("Gelu", ["h"], ["y"])], _x(D), [16], [("W", _w(D, 16))], opset=20
    ),
    "gelu_tanh_fused_opset20": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), _n("Gelu", ["h"], ["y"], approximate="tanh")],
        _x(D),
        [16],
        [("W", _w(D, 16))],
        opset=20,
    ),
    "softmax_rank2": lambda: _model(
        [_n("Gemm", ["x", "W"], ["h"]), _n("Softmax", ["h"], ["y"], axis=-1)],
        _x(D),
        [5],
        [("W", 2 * _w(D, 5))],
    ),
    "attention_no_mask": lambda: _model(*_attention([], "s1")[:1], _x(T, D), [T, D], _attention([], "s1")[1]),
    "attention_additive_key_mask": lambda: _masked(_ADDITIVE_MASK, []),
    "attention_where_key_mask_opset17": lambda: _masked(_WHERE_MASK, [("zero_i", np.int64(0))], 17),
    "attention_causal_and_key_mask": lambda: _masked(_CAUSAL_AND_KEY, [("tril", _TRIL)]),
    "attention_constant_causal_mask": lambda: _model(
        *_attention([_n("Where", ["tril", "s1", "neg"], ["s2"])], "s2")[:1],
        _x(T, D),
        [T, D],
        _attention([], "s2")[1] + [("tril", _TRIL), ("neg", NEG)],
    ),
    "mul_div_constants": lambda: _model(
        [
            _n("MatMul", ["x", "W"], ["h"]),
            _n("Mul", ["h", "c"], ["a"]),
            _n("Div", ["a", "k"], ["r"]),
            _n("Relu", ["r"], ["r8"]),
            _n("Mul", ["r8", "c"], ["y"]),
        ],
        _x(D),
        [D],
        [("W", _w(D, D)), ("c", RNG.uniform(0.5, 2, D)), ("k", np.float32(3.0))],
    ),
    "mul_two_activations": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), _n("Sigmoid", ["h"], ["s"]), _n("Mul", ["h", "s"], ["y"])],
        _x(D),
        [D],
        [("W", _w(D, D))],
    ),
    "tables_tanh_hardsigmoid_leaky_erf": lambda: _model(
        [
            _n("MatMul", ["x", "W"], ["h"]),
            _n("Tanh", ["h"], ["t"]),
            _n("HardSigmoid", ["h"], ["hs"], alpha=0.3, beta=0.4),
            _n("LeakyRelu", ["h"], ["lr"], alpha=0.1),
            _n("Erf", ["h"], ["er"]),
            _n("Concat", ["t", "hs", "lr", "er"], ["y"], axis=-1),
        ],
        _x(D),
        [4 * D],
        [("W", 2 * _w(D, D))],
    ),
    "hardswish": lambda: _model(
        [_n("MatMul", ["x", "W"], ["h"]), _n("HardSwish", ["h"], ["y"])],
        _x(D),
        [D],
        [("W", 3 * _w(D, D))],
        14,
    ),
    "embedding_gather_plus_positions": lambda: _model(
        [
            _n("Gather", ["E", "x"], ["e"]),
            _n("Add", ["e", "P"], ["s"]),
            _n("LayerNormalization", ["s", "g"], ["y"]),
        ],
        [("x", TensorProto.INT64, [T])],
        [T, D],
        [("E", RNG.normal(size=(30, D))), ("P", 0.5 * RNG.normal(size=(1, T, D))), ("g", 1 + 0.2 * _w(D))],
        opset=17,
    ),
    "slice_split_gather_concat_squeeze": lambda: _model(
        [
            _n("MatMul", ["x", "W"], ["h"]),
            _n("Slice", ["h", "st", "en", "ax", "sp"], ["sl"]),  # h[:, 1::2, :5]
            _n("Split", ["sl", "sizes"], ["a", "b"], axis=2),
            _n("Concat", ["b", "a"], ["c"], axis=2),
            _n("Gather", ["h", "zero_i"], ["first"], axis=1),  # h[:, 0]
            _n("Slice", ["first", "st0", "en5", "ax1"], ["f5"]),
            _n("Unsqueeze", ["f5", "ax1"], ["f1"]),
            _n("Concat", ["c", "f1"], ["y0"], axis=1),
            _n("Unsqueeze", ["y0", "ax3"], ["y3"]),
            _n("Squeeze", ["y3", "ax3"], ["y"]),
        ],
        _x(T, D),
        [4, 5],
        [
            ("W", _w(D, D)),
            ("st", np.array([1, 0], np.int64)),
            ("en", np.array([2**62, 5], np.int64)),
            ("ax", np.array([1, 2], np.int64)),
            ("sp", np.array([2, 1], np.int64)),
            ("sizes", np.array([2, 3], np.int64)),
            ("zero_i", np.int64(0)),
            ("st0", np.array([0], np.int64)),
            ("en5", np.array([5], np.int64)),
            ("ax1", np.array([1], np.int64)),
            ("ax3", np.array([3], np.int64)),
        ],
    ),
}


def _calibration(model, n=100):
    feeds = {}
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    for value in model.graph.input:
        row = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
        if value.name == "attention_mask":
            lengths = RNG.integers(2, row[0] + 1, n)
            feeds[value.name] = (np.arange(row[0])[None, :] < lengths[:, None]).astype(np.int64)
        elif types[value.name] == TensorProto.INT64:
            feeds[value.name] = RNG.integers(0, 30, (n, *row))
        else:
            feeds[value.name] = RNG.normal(size=(n, *row)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_tracks_the_float_graph(case):
    model = CASES[case]()
    onnx.checker.check_model(model)
    feeds = _calibration(model)
    program = import_onnx(model, feeds if len(feeds) > 1 else next(iter(feeds.values())))
    out = program.metadata["onnx_fidelity"]["outputs"]["y"]
    assert out["cosine_min_ppm"] >= 990_000, out
    assert out["cosine_mean_ppm"] >= 998_000, out
    rows = {k: v[:5] for k, v in _calibration(model, 5).items()}
    names = [spec.name for spec in program.inputs]
    rows = {name: rows[name] for name in names}
    results = [aivm_jax.infer(program, rows, mode=mode) for mode in ("jit", "eager", "reference")]
    assert len({r.output_hash for r in results}) == 1


@pytest.mark.parametrize(
    "case, patterns",
    [
        (
            "layer_norm_chain_opset13",
            ["LayerNormalization(ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add)"],
        ),
        ("gelu_erf_chain", ["Gelu(Div/Erf/Add/Mul/Mul)"]),
        (
            "attention_additive_key_mask",
            [
                "KeyMask(Cast/Mul/Sub/Unsqueeze from attention_mask)",
                "MaskedSoftmax(Add+Softmax, key mask from attention_mask)",
            ],
        ),
        (
            "attention_where_key_mask_opset17",
            [
                "KeyMask(Equal/Unsqueeze from attention_mask)",
                "MaskedSoftmax(Where+Softmax, key mask from attention_mask)",
            ],
        ),
        (
            "attention_causal_and_key_mask",
            [
                "KeyMask(And/Cast/Unsqueeze from attention_mask)",
                "MaskedSoftmax(Where+Softmax, causal mask from attention_mask)",
            ],
        ),
        ("attention_constant_causal_mask", ["CausalSoftmax(Where+Softmax)"]),
    ],
)
def test_patterns_are_named_and_masks_fold_into_the_softmax(case, patterns):
    model = CASES[case]()
    feeds = _calibration(model, 20)
    program = import_onnx(model, feeds if len(feeds) > 1 else next(iter(feeds.values())))
    found = program.metadata["source"]["patterns"]
    assert sorted(p["pattern"] for p in found) == sorted(patterns)
    softmaxes = [n for n in program.nodes if n.op == "softmax"]
    if "attention" in case:
        assert len(softmaxes) == 1
        assert softmaxes[0].attrs["causal"] == ("causal" in case)
    if "key_mask" in case or "and_key" in case:
        assert softmaxes[0].inputs[1] == "attention_mask"
        spec = {s.name: s for s in program.inputs}["attention_mask"]
        assert spec.dtype == "int8" and spec.bounds == (0, 1)
    assert "layer_norm" in program.op_counts() or "LayerNorm" not in case


def test_masked_keys_do_not_change_kept_rows():
    model = CASES["attention_additive_key_mask"]()
    program = import_onnx(model, _calibration(model))
    rows = _calibration(model, 8)
    rows["attention_mask"][:, -2:] = 0
    changed = {k: v.copy() for k, v in rows.items()}
    changed["x"][:, -2:, :] = RNG.normal(size=(8, 2, D)) * 3  # the padded tokens' content
    a = aivm_jax.infer(program, rows).outputs
    b = aivm_jax.infer(program, changed).outputs
    np.testing.assert_array_equal(a[:, : T - 2], b[:, : T - 2])


def test_token_ids_are_int32_inputs_bounded_by_the_table():
    model = CASES["embedding_gather_plus_positions"]()
    program = import_onnx(model, RNG.integers(0, 30, (50, T)))
    assert program.inputs[0].dtype == "int32" and program.inputs[0].bounds == (0, 29)
    assert "scales" not in program.metadata or "x" not in program.metadata["scales"]
    with pytest.raises(aivm_jax.quant.OnnxImportError, match=r"must lie in \[0, 29\]"):
        import_onnx(model, RNG.integers(0, 31, (50, T)) + 1)


def test_pow_and_sqrt_outside_a_layer_norm_are_reported():
    model = _model(
        [_n("Pow", ["x", "two"], ["p"], name="lone_pow"), _n("Sqrt", ["p"], ["y"], name="lone_sqrt")],
        _x(D),
        [D],
        [("two", np.float32(2.0))],
    )
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(model, RNG.normal(size=(20, D)))
    assert [(op, name) for op, name, _ in caught.value.problems] == [
        ("Pow", "lone_pow"),
        ("Sqrt", "lone_sqrt"),
    ]
    assert "LayerNormalization chain" in str(caught.value)


def test_transformer_converters_are_registered():
    table = converters()
    for op in ["Softmax", "Transpose", "Mul", "Div", "Sigmoid", "Tanh", "Erf", "Gather", "Concat", "Slice"]:
        assert table[op] == [(13, 20)], op
    assert table["LayerNormalization"] == [(17, 20)] and table["Gelu"] == [(20, 20)]
    assert table["HardSwish"] == [(14, 20)]
