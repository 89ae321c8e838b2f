"""Whole models through the ONNX importer, as PyTorch's exporters write them: TorchScript
(``dynamo=False``, opsets 13-20) and dynamo (``dynamo=True``, opsets 18 and 20), trained on sklearn
digits. The issue's bars on the held-out digits (rows no model trained on and no import calibrated
with): argmax agreement with the float model >= 99 %, accuracy within 1 point; the importer's own
fidelity report (held-out calibration rows) at the same bar; the determinism battery on every
imported model; float input, the CLI."""

from __future__ import annotations

import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.models import load_digits_data  # noqa: E402
from aivm_jax.quant import UnsupportedOnnxError, import_onnx  # noqa: E402
from aivm_jax.runtime._host import decode_scale, encode_scale, quantize_to_scale  # noqa: E402

AGREEMENT_BAR = 0.99
"""Argmax agreement of the program with the float model on held-out digits rows (the issue's bar)."""

ACCURACY_POINTS = 0.01
"""The program's accuracy on the held-out digits lies within this of the float model's."""

CNN_EPOCHS = 200
"""Full-batch epochs of `SmallCnn`: at 80 it classified 90 % of the digits, and its near-tied
logits (top-two gaps of 0.01-0.05) put the held-out calibration rows at 284 of 287 (98.95 %)."""


@pytest.fixture(scope="module")
def digits():
    data = load_digits_data()
    x, x_test = (data.x_train / 16.0).astype(np.float32), (data.x_test / 16.0).astype(np.float32)
    return x, data.y_train, x_test, data.y_test


def _train(model, x, y, epochs, batch=None):
    """Adam on full batches (``batch=None``, lr 1e-2) or on shuffled minibatches (lr 3e-3)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2 if batch is None else 3e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for rows in [slice(None)] if batch is None else torch.randperm(len(xt), generator=order).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()
            opt.step()
    with torch.no_grad():  # exact batch statistics for eval mode
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        model(xt)
    return model.eval()


def _export(model, example, opset, *, dynamo=False, dynamic=True):
    """The ONNX file of ``model``: TorchScript or dynamo exporter, batch axis dynamic unless not ``dynamic``."""
    if dynamo:  # dynamic_shapes, as torch.export takes them; needs onnxscript
        pytest.importorskip("onnxscript")
        shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
        exported = torch.onnx.export(
            model,
            (torch.tensor(example),),
            dynamo=True,
            opset_version=opset,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            verbose=False,
        )
        return exported.model_proto.SerializeToString()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.tensor(example),),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
    )
    return buffer.getvalue()


class SmallCnn(nn.Module):
    """Conv+BN+ReLU6, a depthwise-separable residual block, max and average pools, global mean."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.avg(self.pool(x))
        return self.head(x.mean(dim=(2, 3)))


class DepthwiseCnn(nn.Module):
    """MobileNet-style: a Conv+BN+HardSwish stem, an inverted residual block (1x1 expand,
    3x3 depthwise, each with BN+ReLU6, 1x1 project+BN, residual add), a strided depthwise
    conv and a 1x1 conv with BN+HardSwish, global mean, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.block = nn.Sequential(
            nn.Conv2d(8, 16, 1),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 8, 1),
            nn.BatchNorm2d(8),
        )
        self.down = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
            nn.BatchNorm2d(8),
            nn.Hardswish(),
            nn.Conv2d(8, 16, 1),
            nn.BatchNorm2d(16),
            nn.Hardswish(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.down(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def mlp(digits):
    torch.set_num_threads(1)
    x, y = digits[:2]
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    return _train(model, x, y, epochs=40)


@pytest.fixture(scope="module")
def cnn(digits):
    torch.set_num_threads(1)
    x, y = digits[:2]
    return _train(SmallCnn(), x.reshape(-1, 1, 8, 8), y, epochs=CNN_EPOCHS)


@pytest.fixture(scope="module")
def dw_cnn(digits):
    torch.set_num_threads(1)
    x, y = digits[:2]
    torch.manual_seed(0)
    return _train(DepthwiseCnn(), x.reshape(-1, 1, 8, 8), y, epochs=30, batch=64)


@pytest.fixture(scope="module")
def ln_mlp(digits):
    """LayerNorm and GELU: TorchScript decomposes both at opset 13 (ReduceMean/Sub/Pow/Sqrt/Div,
    Div/Erf/Add/Mul) and fuses LayerNormalization from 17 and Gelu at 20; dynamo fuses
    LayerNormalization at 18 and writes GELU with Erf there, as Gelu at 20."""
    torch.set_num_threads(1)
    x, y = digits[:2]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 10))
    return _train(model, x, y, epochs=30, batch=64)


@pytest.fixture(scope="module")
def cnn_program(cnn, digits):
    x = digits[0].reshape(-1, 1, 8, 8)
    return import_onnx(_export(cnn, x[:2], 17), x, name="digits-cnn-onnx")


def _rows(program, x):
    """``x`` shaped as the program's input rows."""
    return x.reshape(-1, *program.inputs[0].shape)


def _check_fidelity(program):
    report = program.metadata["onnx_fidelity"]
    assert report["held_out"] and report["examples"] == 287
    assert report["argmax_agreement"] >= AGREEMENT_BAR * report["examples"], report
    assert report["outputs"]["logits"]["cosine_mean_ppm"] >= 995_000, report


def _check_classifier(program, model, digits):
    """The issue's bars on the held-out digits: argmax agreement with the float model, accuracy."""
    _, _, x_test, y_test = digits
    x_test = _rows(program, x_test)
    with torch.no_grad():
        float_pred = model(torch.tensor(x_test)).argmax(-1).numpy()
    int_pred = aivm_jax.infer(program, x_test).outputs.argmax(-1)
    agreement = (float_pred == int_pred).mean()
    accuracy = (int_pred == y_test).mean(), (float_pred == y_test).mean()
    assert agreement >= AGREEMENT_BAR, (agreement, accuracy)
    assert abs(accuracy[0] - accuracy[1]) <= ACCURACY_POINTS, (agreement, accuracy)


def _check_deterministic(program, x_float):
    """The determinism battery: jit == eager == reference, batch invariance, extreme int8 rows."""
    x = quantize_to_scale(_rows(program, x_float), program.metadata["scales"]["x"])
    modes = {m: aivm_jax.infer(program, x[:40], mode=m) for m in ("jit", "eager", "reference")}
    np.testing.assert_array_equal(modes["jit"].outputs, modes["reference"].outputs)
    np.testing.assert_array_equal(modes["eager"].outputs, modes["reference"].outputs)
    full = aivm_jax.infer(program, x).row_hashes
    for size in (1, 7, 64):
        for start in range(0, len(x) - size, 97):
            assert aivm_jax.infer(program, x[start : start + size]).row_hashes == full[start : start + size]
    shape = (17, *program.inputs[0].shape)
    extreme = np.random.default_rng(1).integers(-128, 128, size=shape).astype(np.int8)
    np.testing.assert_array_equal(
        aivm_jax.infer(program, extreme).outputs, aivm_jax.infer(program, extreme, mode="reference").outputs
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_mlp_with_batchnorm1d_imports_within_the_bar(mlp, digits, opset):
    x = digits[0]
    program = import_onnx(_export(mlp, x[:2], opset), x)
    _check_fidelity(program)
    _check_classifier(program, mlp, digits)
    assert program.metadata["source"]["opset"] == opset
    assert [p["pattern"] for p in program.metadata["source"]["patterns"]] == ["Gemm+BatchNormalization"]
    assert program.op_counts() == {"bias_add": 2, "matmul": 2, "relu": 1, "requantize": 2}


@pytest.mark.parametrize("opset", [13, 17])
def test_cnn_imports_within_the_bar(cnn, digits, opset):
    x = digits[0].reshape(-1, 1, 8, 8)
    program = import_onnx(_export(cnn, x[:2], opset), x)
    _check_fidelity(program)
    _check_classifier(program, cnn, digits)
    ops = program.op_counts()
    assert ops["conv2d"] == 3 and ops["add"] == 1 and ops["max_pool"] == 1 and ops["avg_pool"] == 1
    assert program.inputs[0].shape == (1, 8, 8) and program.outputs[0].dtype == "int32"


def test_imported_program_is_deterministic(cnn_program, digits):
    _check_deterministic(cnn_program, digits[2])


# --------------------------------------------------------------------------- both exporters

EXPORTS = [
    # (model fixture, dynamo, opset, op types the exported graph must hold)
    ("mlp", True, 18, {"Gemm", "Relu"}),
    ("mlp", True, 20, {"Gemm", "Relu"}),
    ("cnn", True, 18, {"Conv", "Clip", "MaxPool", "AveragePool", "ReduceMean"}),
    ("cnn", True, 20, {"Conv", "Clip", "MaxPool", "AveragePool", "ReduceMean"}),
    ("dw_cnn", False, 13, {"Conv", "Clip", "HardSigmoid", "Mul", "ReduceMean"}),  # no HardSwish below 14
    ("dw_cnn", False, 17, {"Conv", "Clip", "HardSwish", "ReduceMean"}),
    ("dw_cnn", False, 20, {"Conv", "Clip", "HardSwish", "ReduceMean"}),
    ("dw_cnn", True, 18, {"Conv", "Clip", "HardSwish", "ReduceMean"}),
    ("dw_cnn", True, 20, {"Conv", "Clip", "HardSwish", "ReduceMean"}),
    ("ln_mlp", False, 13, {"ReduceMean", "Pow", "Sqrt", "Erf"}),  # both decomposed
    ("ln_mlp", False, 20, {"LayerNormalization", "Gelu"}),  # both fused
    ("ln_mlp", True, 18, {"LayerNormalization", "Erf"}),
    ("ln_mlp", True, 20, {"LayerNormalization", "Gelu"}),
]


@pytest.mark.parametrize(
    "fixture, dynamo, opset, ops",
    EXPORTS,
    ids=[f"{m}-{'dynamo' if d else 'torchscript'}-{o}" for m, d, o, _ in EXPORTS],
)
def test_exported_model_imports_within_the_bar(request, digits, fixture, dynamo, opset, ops):
    import onnx

    model = request.getfixturevalue(fixture)
    x = digits[0] if fixture.endswith("mlp") else digits[0].reshape(-1, 1, 8, 8)
    data = _export(model, x[:2], opset, dynamo=dynamo)
    graph = onnx.load_from_string(data).graph
    assert ops <= {n.op_type for n in graph.node}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    program = import_onnx(data, x)
    assert program.metadata["source"]["opset"] == opset
    _check_fidelity(program)
    _check_classifier(program, model, digits)
    _check_deterministic(program, digits[2])
    counts = program.op_counts()
    if fixture == "dw_cnn" and opset == 13:  # x * HardSigmoid(x) became one HardSwish table
        patterns = [p["pattern"] for p in program.metadata["source"]["patterns"]]
        assert patterns.count("HardSwish(HardSigmoid/Mul)") == 3 and counts["table"] == 3
        assert "batch_matmul" not in counts
    if fixture == "ln_mlp":
        assert counts["layer_norm"] == 1 and counts["table"] == 1  # the fused forms, whatever was written
        assert "batch_matmul" not in counts


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_fixed_batch_export_keeps_the_batch_axis(digits, dynamo):
    """An export without a dynamic batch axis (the example's batch, 2, written everywhere, in the
    ``Reshape`` target too) still imports with a batch axis; the float reference runs it 2 rows at
    a time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    x = digits[0][:200].reshape(-1, 1, 8, 8)
    program = import_onnx(_export(model, x[:2], 18 if dynamo else 17, dynamo=dynamo, dynamic=False), x)
    report = program.metadata["onnx_fidelity"]
    assert report["examples"] == 40 and report["outputs"]["logits"]["cosine_mean_ppm"] >= 999_000
    assert aivm_jax.infer(program, x[:5]).outputs.shape == (5, 10)


def test_saved_program_keeps_scales_and_id(cnn_program, tmp_path):
    path = tmp_path / "cnn.aivm"
    model_id = aivm_jax.save(cnn_program, path)
    loaded = aivm_jax.load(path, expected_model_id=model_id)
    assert loaded.metadata["scales"] == cnn_program.metadata["scales"]
    assert set(loaded.metadata["scales"]) == {"x", "logits"}


def test_float_input_is_quantized_on_the_host(cnn_program, digits):
    x = digits[2][:25].reshape(-1, 1, 8, 8)
    by_float = aivm_jax.infer(cnn_program, x)
    by_int = aivm_jax.infer(cnn_program, quantize_to_scale(x, cnn_program.metadata["scales"]["x"]))
    assert by_float.input_quantized and not by_int.input_quantized
    assert by_float.output_hash == by_int.output_hash


def test_float_input_is_still_refused_without_scales():
    from aivm_jax.conformance import DATA_DIR

    program = aivm_jax.load(DATA_DIR / "digits-mlp.aivm")
    with pytest.raises(aivm_jax.InputDTypeError):
        aivm_jax.infer(program, np.zeros((1, 64), np.float32))


def _exact(v: float, scale: dict, lo=-128, hi=127) -> int:
    q = math.floor(
        Fraction(v) / (Fraction(scale["mantissa"]) * Fraction(2) ** scale["exponent"]) + Fraction(1, 2)
    )
    return min(max(q, lo), hi)


@pytest.mark.parametrize("real_scale", [0.25, 0.1, 1 / 127, 3.7e-3, 12.5])
def test_host_quantization_is_exact_at_ties(real_scale):
    scale = encode_scale(real_scale)
    s = decode_scale(scale)
    ks = np.arange(-140, 140)
    ties = (ks + 0.5) * s  # exact in float64: s has 20 significant bits
    values = np.concatenate(
        [ties, np.nextafter(ties, -np.inf), np.nextafter(ties, np.inf), ks * s, [np.inf, -np.inf, 0.0, -0.0]]
    )
    got = quantize_to_scale(values, scale)
    want = [_exact(float(v), scale) if np.isfinite(v) else (127 if v > 0 else -128) for v in values]
    np.testing.assert_array_equal(got, np.array(want, np.int8))
    np.testing.assert_array_equal(quantize_to_scale(np.float32(-2.5) * np.float32(s), scale), -2)
    np.testing.assert_array_equal(quantize_to_scale(np.array([2.5 * s]), scale), [3])
    got32 = quantize_to_scale(ties[:50] * 1e6, scale, "int32")
    assert got32.dtype == np.int32
    np.testing.assert_array_equal(
        got32, [_exact(float(v), scale, -(2**31), 2**31 - 1) for v in ties[:50] * 1e6]
    )
    with pytest.raises(aivm_jax.InputRangeError, match="NaN"):
        quantize_to_scale(np.array([np.nan]), scale)


def test_softplus_is_reported_by_name(digits):
    model = nn.Sequential(nn.Linear(64, 16), nn.Softplus(), nn.Linear(16, 10), nn.Softplus()).eval()
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(_export(model, digits[0][:2], 13), digits[0])
    assert [(op, name) for op, name, _ in caught.value.problems] == [
        ("Softplus", "/1/Softplus"),
        ("Softplus", "/3/Softplus"),
    ]


def test_cli_import_info_infer(mlp, digits, tmp_path):
    from click.testing import CliRunner

    from aivm_jax.cli import main

    x, x_test = digits[0], digits[2]
    (tmp_path / "mlp.onnx").write_bytes(_export(mlp, x[:2], 17))
    np.save(tmp_path / "calib.npy", x)
    np.save(tmp_path / "rows.npy", x_test[:3])
    runner = CliRunner()
    out = tmp_path / "mlp.aivm"
    done = runner.invoke(
        main,
        [
            "import",
            str(tmp_path / "mlp.onnx"),
            "--calibration",
            str(tmp_path / "calib.npy"),
            "-o",
            str(out),
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    imported = json.loads(done.output)
    assert imported["fidelity"]["argmax_agreement"] >= AGREEMENT_BAR * 287
    info = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert info["model_id"] == imported["model_id"]
    assert info["inputs"][0]["scale"] == decode_scale(info["inputs"][0]["scale_exact"]) > 0
    assert info["outputs"][0]["scale"] > 0
    human = runner.invoke(main, ["info", str(out)]).output
    assert "scale" in human and "argmax agreement" in human
    ran = json.loads(
        runner.invoke(main, ["infer", str(out), "--input", str(tmp_path / "rows.npy"), "--json"]).output
    )
    assert ran["input_quantized"] is True and len(ran["outputs"]) == 3
    np.save(tmp_path / "ints.npy", quantize_to_scale(x_test[:3], info["inputs"][0]["scale_exact"]))
    again = json.loads(
        runner.invoke(main, ["infer", str(out), "--input", str(tmp_path / "ints.npy"), "--json"]).output
    )
    assert "input_quantized" not in again and again["output_hash"] == ran["output_hash"]
    bad = runner.invoke(
        main,
        [
            "import",
            str(tmp_path / "mlp.onnx"),
            "--calibration",
            str(tmp_path / "calib.npy"),
            "-o",
            str(out),
            "--dim",
            "nope",
        ],
    )
    assert bad.exit_code != 0
