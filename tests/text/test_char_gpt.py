"""char-gpt: fidelity to its float model, and the same tokens with or without the cache, alone or batched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import aivm_jax
from aivm_jax import InputRangeError, WrongProgramError
from aivm_jax.cli import main
from aivm_jax.models._char_gpt import char_gpt_fidelity

pytestmark = pytest.mark.slow

PROMPTS = [
    "The ",
    "def f(x):\n    return",
    "A class definition",
    "If the",
    "Exceptions are raised when an error",
    "x",
    "for item in ",
    'The "import" statement',
]


def test_fidelity_to_the_float_model(char_gpt):
    program, params, vocab, _ = char_gpt
    report = char_gpt_fidelity(program, params, vocab)
    assert report["heldout_tokens"] >= 3000
    assert report["agreement_ppm"] >= 950_000, report
    assert report["perplexity_ratio_ppm"] <= 1_050_000, report


def test_same_tokens_alone_batched_cached_or_recomputed(char_gpt):
    program = char_gpt[0]
    batched = aivm_jax.generate(program, PROMPTS, 20)
    recomputed = aivm_jax.generate(program, PROMPTS, 20, cache=False)
    assert batched.tokens == recomputed.tokens
    for i in (0, 1, 5):
        alone = aivm_jax.generate(program, [PROMPTS[i]], 20)
        assert alone.tokens[0] == batched.tokens[i]
        assert alone.token_hashes[0] == batched.token_hashes[i]
    assert len(set(batched.texts)) > 1  # not a degenerate constant output
    assert all(len(t) == 20 for t in batched.tokens)


_CHILD = textwrap.dedent(
    """
    import json, sys
    import aivm_jax, jax
    prompts = json.loads(sys.argv[2])
    result = aivm_jax.generate(sys.argv[1], prompts, 12, devices="all")
    print(json.dumps({"devices": jax.local_device_count(), "tokens": result.tokens}))
    """
)


def test_eight_devices_give_the_same_tokens(char_gpt):
    program, _, _, path = char_gpt
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), json.dumps(PROMPTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["devices"] == 8
    here = aivm_jax.generate(program, PROMPTS, 12)
    assert [tuple(t) for t in child["tokens"]] == list(here.tokens)


def test_cli_generate_and_errors(char_gpt, minilm_file):
    program, _, _, path = char_gpt
    runner = CliRunner()
    done = runner.invoke(
        main,
        ["generate", str(path), "--prompt", "The ", "--prompt", "def ", "--max-new-tokens", "8", "--json"],
    )
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["model_id"] == program.model_id
    assert [r["prompt"] for r in data["results"]] == ["The ", "def "]
    expected = aivm_jax.generate(program, ["The ", "def "], 8)
    assert [r["tokens"] for r in data["results"]] == [list(t) for t in expected.tokens]
    assert [r["text"] for r in data["results"]] == list(expected.texts)
    assert [r["tokens_hash"] for r in data["results"]] == list(expected.token_hashes)
    info = runner.invoke(main, ["info", str(path), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["metadata"]["kind"] == "char-lm"
    assert described["metadata"]["lm_fidelity"]["agreement_ppm"] >= 950_000
    assert {"name": "past_k.0", "dtype": "int8", "shape": [4, 128, 32], "dynamic": [1]} in described["inputs"]
    with pytest.raises(InputRangeError, match="vocabulary"):
        aivm_jax.generate(program, ["caf\u00e9"], 4)
    with pytest.raises(InputRangeError, match="context"):
        aivm_jax.generate(program, ["x" * 120], 9)
    with pytest.raises(WrongProgramError, match="char-gpt"):
        aivm_jax.generate(minilm_file, ["The "], 4)
    bad = runner.invoke(main, ["generate", str(path), "--prompt", "", "--max-new-tokens", "3"])
    assert bad.exit_code == 1 and "at least one character" in bad.output
