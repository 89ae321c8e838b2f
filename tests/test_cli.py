"""The `aivm` command line: JSON shapes, and errors as one line with a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import aivm_jax
from aivm_jax.cli import main
from aivm_jax.conformance import DATA_DIR


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_info_json(run):
    result = run("info", DATA_DIR / "digits-cnn.aivm", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"model_id", "opset", "inputs", "outputs", "ops", "params", "fidelity"} <= set(data)
    assert data["inputs"] == [{"name": "x", "shape": [8, 8, 1], "dtype": "int8"}]
    assert data["outputs"] == [{"name": "y", "shape": [10], "dtype": "int8"}]
    assert data["ops"]["conv2d"] == 2 and data["opset"] == 1
    assert data["fidelity"]["integer_accuracy_pct"] >= 95


def test_info_human(run):
    result = run("info", DATA_DIR / "digits-mlp.aivm")
    assert result.exit_code == 0 and "model id   0x" in result.output and "fidelity" in result.output


def test_infer_npy_and_json_agree(run, tmp_path, golden_hashes):
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    outs = []
    for path in (tmp_path / "x.npy", tmp_path / "x.json"):
        result = run("infer", DATA_DIR / "digits-mlp.aivm", "--input", path, "--json")
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.output))
    assert outs[0] == outs[1]
    assert set(outs[0]) == {"model_id", "output_hash", "row_hashes", "outputs"}
    assert outs[0]["row_hashes"] == golden_hashes["digits-mlp"]["row_hashes"]
    human = run("infer", DATA_DIR / "digits-mlp.aivm", "--input", tmp_path / "x.npy")
    assert "argmax" in human.output and outs[0]["output_hash"] in human.output


def test_zoo_list(run):
    result = run("zoo", "list", "--json")
    assert set(json.loads(result.output)["models"]) >= {"digits-mlp", "digits-cnn"}


def test_zoo_build_writes_a_loadable_program(run, tmp_path, golden_hashes, trained_where_shipped):
    out = tmp_path / "sub" / "mlp.aivm"
    result = run("zoo", "build", "digits-mlp", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    model_id = json.loads(result.stdout)["model_id"]
    assert model_id == aivm_jax.load(out).model_id
    if trained_where_shipped:  # float training reproduces the shipped weights only there
        assert model_id == golden_hashes["digits-mlp"]["model_id"]
    assert run("info", out, "--json").exit_code == 0


def test_conformance_json(run):
    result = run("conformance", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["conformant"] is True
    assert report["backends"]["cpu"]["passed"] == report["backends"]["cpu"]["checks"] > 20


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "/nonexistent.aivm"], "no program file"),
        (["zoo", "build", "nope", "-o", "x.aivm"], "no zoo model 'nope'"),
        (["infer", DATA_DIR / "digits-mlp.aivm", "--input", "/nonexistent.npy"], "no input file"),
        (["infer", DATA_DIR / "digits-mlp.aivm", "--input", "{tmp}/f.json"], "must hold integers"),
        (["infer", DATA_DIR / "digits-mlp.aivm", "--input", "{tmp}/big.json"], "outside int8"),
        (["infer", DATA_DIR / "digits-mlp.aivm", "--input", "{tmp}/ragged.json"], "cannot read"),
        (["infer", DATA_DIR / "digits-mlp.aivm", "--input", "{tmp}/shape.json"], "must have shape"),
        (["info", "{tmp}/tampered.aivm"], "modified"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(run, tmp_path, args, message):
    (tmp_path / "f.json").write_text(json.dumps([[0.5] * 64]))
    (tmp_path / "big.json").write_text(json.dumps([[300] * 64]))
    (tmp_path / "ragged.json").write_text(json.dumps([[1, 2], [3]]))
    (tmp_path / "shape.json").write_text(json.dumps([[1] * 63]))
    data = bytearray((DATA_DIR / "digits-mlp.aivm").read_bytes())
    data[500] ^= 1
    (tmp_path / "tampered.aivm").write_bytes(bytes(data))
    result = run(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
