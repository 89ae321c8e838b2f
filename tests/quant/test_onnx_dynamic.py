"""``--dim`` axes through the ONNX importer: dynamic when the program does not depend on the
length, static (with the reason in ``source.dims``) when the graph bakes the length in; the CLI.

The BERT-like encoder's dynamic sequence axis is tested in ``test_onnx_encoder.py``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.quant import import_onnx  # noqa: E402
from aivm_jax.runtime._host import decode_scale  # noqa: E402

T, D = 8, 16


class Tokenwise(nn.Module):
    """Each position on its own: nothing depends on the length."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class WholeTable(nn.Module):
    """A learned position table added whole: only length T fits."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.pos = nn.Parameter(torch.randn(1, T, D))

    def forward(self, x):
        return self.proj(x) + self.pos


class BakedReshape(nn.Module):
    """A reshape to a constant target that holds the length."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D, D)

    def forward(self, x):
        b = x.shape[0]
        return self.proj(x).reshape(b, T, 2, D // 2).reshape(b, T, D)


def _export(model) -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(
        model.eval(),
        (torch.randn(2, T, D),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}},
    )
    return buffer.getvalue()


def _rows(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, T, D)).astype(np.float32)


@pytest.fixture(scope="module")
def tokenwise():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _export(Tokenwise())


def test_a_length_free_graph_gets_a_dynamic_axis(tokenwise):
    import onnx

    from aivm_jax.quant.onnx._fidelity import run_float

    program = import_onnx(tokenwise, _rows(40), dims={"seq": T})
    assert program.metadata["source"]["dims"] == {"seq": {"size": T, "dynamic": True}}
    assert [s.describe() for s in program.inputs] == [f"int8[<={T}, {D}]"]
    assert [s.describe() for s in program.outputs] == [f"int32[<={T}, {D}]"]
    rows = _rows(6, 1)
    full = aivm_jax.infer(program, rows).outputs
    scale = decode_scale(program.metadata["scales"]["y"])
    for length in (5, 1):
        out = aivm_jax.infer(program, rows[:, :length]).outputs
        # no op mixes positions: each position gives the bits it gives in the longest row
        np.testing.assert_array_equal(out, full[:, :length])
        want = next(iter(run_float(onnx.load_from_string(tokenwise), {"x": rows[:, :length]})[0].values()))
        got = out * scale
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cosine.min() >= 0.999


@pytest.mark.parametrize(
    ("module", "where"),
    [(WholeTable, "at length 7"), (BakedReshape, "at length 7")],
    ids=["whole-position-table", "reshape-to-a-constant-length"],
)
def test_a_graph_that_bakes_the_length_in_stays_static(module, where):
    torch.manual_seed(0)
    program = import_onnx(_export(module()), _rows(20), dims={"seq": T})
    report = program.metadata["source"]["dims"]["seq"]
    assert report["size"] == T and report["dynamic"] is False
    assert where in report["static_because"], report
    assert [s.describe() for s in program.inputs] == [f"int8[{T}, {D}]"]
    assert aivm_jax.infer(program, _rows(2, 1)).outputs.shape == (2, T, D)
    with pytest.raises(aivm_jax.AivmError, match="must have shape"):
        aivm_jax.infer(program, _rows(2, 1)[:, :5])


def test_a_constant_folded_from_the_length_keeps_the_axis_static():
    """Steps 1's exact check: the length itself ends up in a constant the graph adds."""

    class AddsLength(nn.Module):
        def forward(self, x):
            return x * 2.0 + x.shape[1]

    program = import_onnx(_export(AddsLength()), _rows(20), dims={"seq": T})
    report = program.metadata["source"]["dims"]["seq"]
    assert report["dynamic"] is False and "folds its length into Add" in report["static_because"], report


def test_cli_import_dim_and_info(tokenwise, tmp_path):
    from click.testing import CliRunner

    from aivm_jax.cli import main

    (tmp_path / "m.onnx").write_bytes(tokenwise)
    np.save(tmp_path / "calib.npy", _rows(20))
    (tmp_path / "baked.onnx").write_bytes(_export(BakedReshape()))
    runner = CliRunner()
    args = ["--calibration", str(tmp_path / "calib.npy"), "--dim", f"seq={T}"]
    done = runner.invoke(main, ["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.aivm"), *args])
    assert done.exit_code == 0, done.output
    assert f"x int8[<={T}, {D}]" in done.output and f"seq: dynamic, any length up to {T}" in done.output
    info = json.loads(runner.invoke(main, ["info", str(tmp_path / "m.aivm"), "--json"]).output)
    assert info["inputs"][0]["shape"] == [T, D] and info["inputs"][0]["dynamic"] == [0]
    assert f"x: int8[<={T}, {D}]" in runner.invoke(main, ["info", str(tmp_path / "m.aivm")]).output
    assert info["metadata"]["source"]["dims"]["seq"]["dynamic"] is True
    baked = runner.invoke(
        main, ["import", str(tmp_path / "baked.onnx"), "-o", str(tmp_path / "b.aivm"), *args, "--json"]
    )
    assert baked.exit_code == 0, baked.output
    data = json.loads(baked.output)
    assert data["inputs"] == {"x": [str(T), str(D)]} and data["dims"]["seq"]["dynamic"] is False
    human = runner.invoke(
        main, ["import", str(tmp_path / "baked.onnx"), "-o", str(tmp_path / "b.aivm"), *args]
    )
    assert f"axis seq stays static at {T}:" in human.output


def test_a_global_pool_over_bound_axes_keeps_them_static():
    """Step 2's check: the spatial mean (an exact sum against a ones parameter of h * w
    entries) depends on the bound height and width."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rows = np.random.default_rng(0).normal(size=(20, 3, 4, 5))
    program = import_onnx(model, rows, dims={"h": 4, "w": 5})
    dims = program.metadata["source"]["dims"]
    assert [d["dynamic"] for d in dims.values()] == [False, False]
    reason = dims["h"]["static_because"]
    assert "ones" in reason and "follows the length" in reason, reason
    assert program.inputs[0].dynamic == ()
