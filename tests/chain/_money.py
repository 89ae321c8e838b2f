"""The market's money invariant, shared by the attack tests and the stateful fuzz."""

from __future__ import annotations

from collections.abc import Iterable

from aivm_jax.chain import Network


def owed(network: Network, accounts: Iterable[str]) -> int:
    """What the market owes: every stake and withdrawable balance, open fees and burned bonds."""
    m = network.market.functions
    total = int(m.openFees().call()) + int(m.burned().call())
    for account in set(accounts):
        total += int(m.stakeOf(account).call()) + int(m.withdrawable(account).call())
    return total


def assert_solvent(network: Network, accounts: Iterable[str]) -> None:
    """The market's balance is exactly what it owes (``accounts``: everyone who ever touched it)."""
    balance = network.chain.w3.eth.get_balance(network.market_address)
    assert balance == owed(network, accounts), "the market's balance differs from what it owes"
