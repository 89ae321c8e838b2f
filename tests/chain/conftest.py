"""Chain fixtures: a fresh embedded chain (py-evm) with the contracts and the MLP registered."""

from __future__ import annotations

import numpy as np
import pytest

import aivm_jax
from aivm_jax.chain import Chain, Network
from aivm_jax.conformance import DATA_DIR

MLP = DATA_DIR / "digits-mlp.aivm"


class Clock:
    """Moves the embedded chain's clock (eth-tester's time travel)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def jump_past(self, timestamp: int) -> None:
        tester = self.chain.w3.provider.ethereum_tester
        pending = int(tester.get_block_by_number("pending")["timestamp"])
        tester.time_travel(max(pending, timestamp) + 1)


@pytest.fixture
def chain() -> Chain:
    return Chain.embedded()


@pytest.fixture
def network(chain) -> Network:
    return Network.deploy(chain)


@pytest.fixture
def clock(chain, monkeypatch) -> Clock:
    monkeypatch.setattr(Chain, "sync_clock", lambda self: None)  # the test owns the clock
    return Clock(chain)


@pytest.fixture(scope="session")
def mlp():
    return aivm_jax.load(MLP)


@pytest.fixture(scope="session")
def mlp_inputs():
    return np.load(DATA_DIR / "digits-mlp.inputs.npy")[:3]


@pytest.fixture
def registered(network, mlp):
    network.register(mlp, str(MLP))
    return network


@pytest.fixture
def nodes(registered, chain):
    """Four staked node accounts (accounts 1-4), as `Network` handles."""
    out = []
    for address in chain.w3.eth.accounts[1:5]:
        handle = registered.as_account(address)
        handle.stake(4 * registered.bond())
        out.append(handle)
    return out
