"""`aivm prove setup`, `aivm prove`, `aivm verify`, `aivm prove verifier` over the library."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from aivm_jax.cli import main
from aivm_jax.conformance import DATA_DIR

pytestmark = pytest.mark.slow
MLP = str(DATA_DIR / "digits-mlp.aivm")


@pytest.fixture
def run(proof_cache):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [*map(str, args), "--cache-dir", str(proof_cache)], catch_exceptions=False)

    return invoke


def test_prove_and_verify_from_the_command_line(run, keys, tmp_path):
    setup = run("prove", "setup", MLP, "--dev-srs", "--json")
    assert setup.exit_code == 0, setup.output
    assert json.loads(setup.stdout)["vk_sha256"] == keys["digits-mlp"].vk_sha256
    assert "reusing" in setup.stderr and "NOT secure" not in setup.stdout

    np.save(tmp_path / "x.npy", np.load(DATA_DIR / "digits-mlp.inputs.npy")[3:4])
    proved = run("prove", MLP, "--input", tmp_path / "x.npy", "-o", tmp_path / "p.json", "--json")
    assert proved.exit_code == 0, proved.output
    claim = json.loads(proved.stdout)
    assert set(claim) >= {"model_id", "output_hash", "outputs", "proving_seconds"}
    assert "proving" in proved.stderr  # progress on the long step

    verified = run("verify", tmp_path / "p.json", "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["output_hash"] == claim["output_hash"]

    document = json.loads((tmp_path / "p.json").read_text())
    document["outputs"][0][2] -= 1
    (tmp_path / "bad.json").write_text(json.dumps(document))
    rejected = run("verify", tmp_path / "bad.json")
    assert rejected.exit_code == 1
    assert rejected.stderr.startswith("error: ") and rejected.stderr.count("\n") == 1


def test_verifier_command_writes_compiled_artifacts(run, keys, tmp_path):
    result = run("prove", "verifier", MLP, "-o", tmp_path / "v", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    artifact = json.loads((tmp_path / "v" / "Verifier.json").read_text())
    assert artifact["abi"] and artifact["bytecode"].startswith("0x")
    assert info["deployed_bytecode_bytes"] < 24_576 and info["kind"] == "own"
    assert not (tmp_path / "v" / "vka.json").exists()
    result = run("prove", "verifier", MLP, "-o", tmp_path / "r", "--reusable", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "reusable"
    assert json.loads((tmp_path / "r" / "vka.json").read_text())["model_id"] == keys["digits-mlp"].model_id


def test_prove_errors_are_one_line(run, tmp_path):
    result = run("prove", "setup", MLP)
    assert result.exit_code == 1 and "--dev-srs" in result.stderr
    result = run("verify", tmp_path / "missing.json")
    assert result.exit_code == 1 and "no proof file" in result.stderr
