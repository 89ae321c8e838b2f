"""Transformer programs, built once per session from the real weights and the shipped text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import aivm_jax

DATA = Path(__file__).parent.parent / "data"


def _cli_build(name: str, path: Path) -> Path:
    from click.testing import CliRunner

    from aivm_jax.cli import main

    done = CliRunner().invoke(main, ["zoo", "build", name, "-o", str(path), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["model_id"] == aivm_jax.load(path).model_id
    return path


@pytest.fixture(scope="session")
def minilm_file(tmp_path_factory) -> Path:
    """Built through `aivm zoo build minilm-l6 -o FILE`."""
    return _cli_build("minilm-l6", tmp_path_factory.mktemp("minilm") / "minilm-l6.aivm")


@pytest.fixture(scope="session")
def minilm(minilm_file):
    return aivm_jax.load(minilm_file)


@pytest.fixture(scope="session")
def visible() -> dict:
    """20 sentences with the float embeddings sentence-transformers computes (copied from shared/data)."""
    return json.loads((DATA / "minilm_visible.json").read_text())


@pytest.fixture(scope="session")
def char_gpt(tmp_path_factory):
    """``(program, float params, vocab, path)``: built through `aivm zoo build char-gpt -o FILE`.

    The float parameters come from the same (cached, deterministic) training run.
    """
    from aivm_jax.models._char_gpt import train_char_gpt

    path = _cli_build("char-gpt", tmp_path_factory.mktemp("char-gpt") / "char-gpt.aivm")
    params, vocab = train_char_gpt()
    return aivm_jax.load(path), params, vocab, path
