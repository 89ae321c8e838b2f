"""`aivm node`: the policy options reach the daemon; bad options and a dead chain are one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

import aivm_jax.cli._main as cli
from aivm_jax.chain import Node


def test_policy_options_reach_the_node(registered, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_network", lambda *a: registered)
    monkeypatch.setattr(Node, "run", lambda self, poll: seen.update(policy=self.policy, poll=poll))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = ["node", "--models", str(tmp_path / "m"), "--min-fee", "5", "--max-window", "600"]
    args += [
        "--max-lock",
        "900",
        "--input-dir",
        str(inputs),
        "--input-scheme",
        "http",
        "--input-scheme",
        "https",
    ]
    args += ["--max-model-mb", "2", "--download-timeout", "7", "--no-local-models"]
    done = CliRunner().invoke(cli.main, args)
    assert done.exit_code == 0, done.output
    p = seen["policy"]
    assert (p.min_fee, p.max_commit_window, p.max_reveal_window, p.max_lock) == (5, 600, 600, 900)
    assert p.input_dir == inputs.resolve() and p.input_schemes == {"http", "https"}
    assert (p.max_model_bytes, p.download_timeout, p.local_models) == (2 << 20, 7.0, False)


def test_bad_options_and_a_dead_chain_are_one_line_errors(tmp_path):
    runner = CliRunner()
    done = runner.invoke(
        cli.main, ["node", "--models", str(tmp_path), "--min-reveal-window", "100", "--max-window", "50"]
    )
    assert done.exit_code == 2 and "min_reveal_window" in done.output and "Traceback" not in done.output
    done = runner.invoke(cli.main, ["node", "--models", str(tmp_path), "--rpc-url", "http://127.0.0.1:9"])
    assert done.exit_code == 1 and done.output.startswith("error: no JSON-RPC node answers")
    assert done.output.count("\n") == 1
