"""Transformer programs, built once per session from the real weights and the shipped text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import aivm_jax

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="session")
def minilm_file(tmp_path_factory) -> Path:
    from aivm_jax.models import build

    path = tmp_path_factory.mktemp("minilm") / "minilm-l6.aivm"
    aivm_jax.save(build("minilm-l6"), path)
    return path


@pytest.fixture(scope="session")
def minilm(minilm_file):
    return aivm_jax.load(minilm_file)


@pytest.fixture(scope="session")
def visible() -> dict:
    """20 sentences with the float embeddings sentence-transformers computes (copied from shared/data)."""
    return json.loads((DATA / "minilm_visible.json").read_text())


@pytest.fixture(scope="session")
def char_gpt(tmp_path_factory):
    """``(program, float params, vocab, path)``: trained (seeded), quantized and saved."""
    from aivm_jax.models._char_gpt import quantize_char_gpt, train_char_gpt

    params, vocab = train_char_gpt()
    program = quantize_char_gpt(params, vocab)
    path = tmp_path_factory.mktemp("char-gpt") / "char-gpt.aivm"
    aivm_jax.save(program, path)
    return program, params, vocab, path
