"""Fixtures: the zoo programs with their inputs, and the MerkleCheck contract on py-evm."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax.conformance import DATA_DIR
from aivm_jax.program import load


@pytest.fixture(scope="session")
def zoo():
    """name -> (program, inputs) for the conformance zoo programs."""
    return {
        name: (load(DATA_DIR / f"{name}.aivm"), np.load(DATA_DIR / f"{name}.inputs.npy"))
        for name in ("digits-mlp", "digits-cnn")
    }


@pytest.fixture(scope="session")
def merkle_check():
    from aivm_jax.chain import Chain, artifact

    chain = Chain.embedded()
    compiled = artifact("MerkleCheck")
    address = chain.deploy(compiled["abi"], compiled["bytecode"])
    return chain.w3.eth.contract(address=address, abi=compiled["abi"])
