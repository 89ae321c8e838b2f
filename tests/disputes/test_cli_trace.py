"""`aivm trace`: the trace root, step roots and output hash of a request, as JSON."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from aivm_jax import infer
from aivm_jax.cli._main import main
from aivm_jax.conformance import DATA_DIR
from aivm_jax.disputes import model_commitment, trace


def test_trace_command_prints_the_roots(zoo, tmp_path):
    program, x = zoo["digits-cnn"]
    path = tmp_path / "x.npy"
    np.save(path, x[:2])
    run = CliRunner().invoke(
        main, ["trace", str(DATA_DIR / "digits-cnn.aivm"), "--input", str(path), "--json"]
    )
    assert run.exit_code == 0, run.output
    data = json.loads(run.output)
    expected = trace(program, x[:2])
    assert data["model_id"] == program.model_id
    assert data["output_hash"] == infer(program, x[:2]).output_hash
    assert data["trace_root"] == expected.hex
    assert data["model_commitment"] == model_commitment(program).hex
    assert data["steps"] == len(program.nodes) + 1 == len(data["rows"][0]["step_roots"])
    assert data["rows"][1]["step_roots"] == ["0x" + r.hex() for r in expected.rows[1].step_roots]
    human = CliRunner().invoke(main, ["trace", str(DATA_DIR / "digits-cnn.aivm"), "--input", str(path)])
    assert human.exit_code == 0 and expected.hex in human.output
    missing = CliRunner().invoke(main, ["trace", str(DATA_DIR / "digits-cnn.aivm"), "--input", "nope.npy"])
    assert missing.exit_code == 1 and missing.output.startswith("error:")
