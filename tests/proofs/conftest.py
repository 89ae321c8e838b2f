"""Proof fixtures: one key cache (and development SRS) for the whole session."""

from __future__ import annotations

import numpy as np
import pytest

import aivm_jax
from aivm_jax import proofs
from aivm_jax.conformance import DATA_DIR


@pytest.fixture(scope="session")
def proof_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("aivm-cache")


@pytest.fixture(scope="session")
def programs():
    return {name: aivm_jax.load(DATA_DIR / f"{name}.aivm") for name in ("digits-mlp", "digits-cnn")}


@pytest.fixture(scope="session")
def keys(programs, proof_cache):
    return {name: proofs.setup(p, dev_srs=True, cache_dir=proof_cache) for name, p in programs.items()}


@pytest.fixture(scope="session")
def proof_documents(programs, keys, proof_cache):
    """One real proof per zoo model, of the first held-out test image."""
    out = {}
    for name, program in programs.items():
        x = np.load(DATA_DIR / f"{name}.inputs.npy")[:1]
        out[name] = proofs.prove(program, x, cache_dir=proof_cache)
    return out
