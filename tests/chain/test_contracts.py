"""Every contract path on the embedded chain, attacks included."""

from __future__ import annotations

import os

import pytest

import aivm_jax
from aivm_jax import TransactionRevertedError
from aivm_jax.chain import artifact

SALT = [os.urandom(32) for _ in range(8)]


def reverts_with(name):
    return pytest.raises(TransactionRevertedError, match=name)


# ------------------------------------------------------------------ registry


def test_register_and_read_back(registered, mlp, chain):
    model = registered.model(mlp.model_id)
    assert model["owner"] == chain.address and model["opset"] == 1
    assert model["input_size"] == 64 and model["output_size"] == 10
    assert model["parent"] == "0x" + "00" * 32


def test_a_registered_id_can_never_be_overwritten(registered, mlp, chain):
    other = registered.as_account(chain.w3.eth.accounts[5])
    with reverts_with("AlreadyRegistered"):
        other.register(mlp, "file:///evil.aivm")  # another owner, another URI
    with reverts_with("AlreadyRegistered"):
        registered.register(mlp, "file:///moved.aivm")  # not even the owner may alter it
    assert registered.model(mlp.model_id)["uri"].endswith("digits-mlp.aivm")


def test_only_the_owner_adds_versions_and_sets_the_verifier(registered, mlp, chain):
    newer = mlp.with_metadata(note="v2")
    stranger = registered.as_account(chain.w3.eth.accounts[5])
    with reverts_with("NotOwner"):
        stranger.register(newer, "file:///v2.aivm", parent=mlp.model_id)
    with reverts_with("NotOwner"):
        stranger.set_verifier(mlp.model_id, chain.w3.eth.accounts[5], [b"\0" * 32])
    registered.register(newer, "file:///v2.aivm", parent=mlp.model_id)
    assert registered.model(newer.model_id)["parent"] == mlp.model_id
    versions = registered.chain.call(
        registered.registry.functions.versionsOf(bytes.fromhex(mlp.model_id[2:]))
    )
    assert ["0x" + v.hex() for v in versions] == [newer.model_id]
    with reverts_with("UnknownModel"):
        registered.register(newer.with_metadata(note="v3"), "x", parent="0x" + "ab" * 32)


# ------------------------------------------------------------------ market


def test_request_for_an_unregistered_model_reverts(network, mlp_inputs):
    with reverts_with("UnknownModel"):
        network.request("0x" + "12" * 32, mlp_inputs)


def _honest_hash(mlp, mlp_inputs):
    return aivm_jax.infer(mlp, mlp_inputs).output_hash


def test_consensus_pays_the_honest_and_slashes_the_faulty(registered, nodes, mlp, mlp_inputs, clock):
    honest = _honest_hash(mlp, mlp_inputs)
    wrong = "0x" + "ee" * 32
    fee, bond = 9 * 10**15, registered.bond()
    rid = registered.request(
        mlp.model_id, mlp_inputs, fee=fee, quorum=2, commit_window=100, reveal_window=100
    )
    answers = [honest, honest, honest, wrong]
    for node, answer, salt in zip(nodes, answers, SALT):
        node.commit(rid, answer, salt)
    info = registered.request_info(rid)
    clock.jump_past(info["commit_deadline"])
    stakes_before = [registered.market.functions.stakeOf(n.chain.address).call() for n in nodes]
    for node, answer, salt in zip(nodes, answers, SALT):
        node.reveal(rid, answer, salt)
    nodes[0].finalize(rid)  # every committed node revealed: no need to wait for the deadline
    info = registered.request_info(rid)
    assert info["status"] == "finalized" and info["output_hash"] == honest and not info["by_proof"]
    stakes_after = [registered.market.functions.stakeOf(n.chain.address).call() for n in nodes]
    assert stakes_after == [*stakes_before[:3], stakes_before[3] - bond]
    share = (fee + bond) // 3
    assert [registered.withdrawable(n.chain.address) for n in nodes] == [share, share, share, 0]
    balance = registered.chain.w3.eth.get_balance(nodes[0].chain.address)
    assert nodes[0].withdraw() == share
    assert registered.chain.w3.eth.get_balance(nodes[0].chain.address) > balance
    assert registered.withdrawable(nodes[0].chain.address) == 0


def test_a_node_that_never_reveals_is_slashed(registered, nodes, mlp, mlp_inputs, clock):
    honest = _honest_hash(mlp, mlp_inputs)
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=2, commit_window=100, reveal_window=100)
    for node, salt in zip(nodes[:3], SALT):
        node.commit(rid, honest, salt)
    info = registered.request_info(rid)
    clock.jump_past(info["commit_deadline"])
    nodes[0].reveal(rid, honest, SALT[0])
    nodes[1].reveal(rid, honest, SALT[1])
    with reverts_with("TooEarly"):
        nodes[0].finalize(rid)  # node 2 has not revealed and the deadline has not passed
    clock.jump_past(info["reveal_deadline"])
    before = registered.market.functions.stakeOf(nodes[2].chain.address).call()
    nodes[0].finalize(rid)
    assert registered.request_info(rid)["status"] == "finalized"
    assert registered.market.functions.stakeOf(nodes[2].chain.address).call() == before - registered.bond()


def test_finalize_without_quorum_fails_the_request_and_refunds(
    registered, nodes, mlp, mlp_inputs, clock, chain
):
    honest = _honest_hash(mlp, mlp_inputs)
    fee = 10**15
    rid = registered.request(
        mlp.model_id, mlp_inputs, fee=fee, quorum=3, commit_window=100, reveal_window=100
    )
    nodes[0].commit(rid, honest, SALT[0])
    nodes[1].commit(rid, "0x" + "11" * 32, SALT[1])
    info = registered.request_info(rid)
    with reverts_with("TooEarly"):
        nodes[0].finalize(rid)
    clock.jump_past(info["commit_deadline"])
    nodes[0].reveal(rid, honest, SALT[0])
    nodes[1].reveal(rid, "0x" + "11" * 32, SALT[1])
    nodes[0].finalize(rid)  # everyone revealed, but 1 vote < quorum 3 (and a tie)
    assert registered.request_info(rid)["status"] == "failed"
    assert registered.withdrawable(chain.address) == fee
    with reverts_with("NotOpen"):
        nodes[0].finalize(rid)


def test_reveal_must_match_the_commitment(registered, nodes, mlp, mlp_inputs, clock):
    honest = _honest_hash(mlp, mlp_inputs)
    rid = registered.request(mlp.model_id, mlp_inputs, commit_window=100, reveal_window=100)
    nodes[0].commit(rid, honest, SALT[0])
    with reverts_with("RevealNotOpen"):
        nodes[0].reveal(rid, honest, SALT[0])  # still in the commit phase
    clock.jump_past(registered.request_info(rid)["commit_deadline"])
    with reverts_with("RevealMismatch"):
        nodes[0].reveal(rid, "0x" + "22" * 32, SALT[0])  # another hash
    with reverts_with("RevealMismatch"):
        nodes[0].reveal(rid, honest, SALT[1])  # another salt
    with reverts_with("NotCommitted"):
        nodes[1].reveal(rid, honest, SALT[1])
    nodes[0].reveal(rid, honest, SALT[0])
    with reverts_with("AlreadyRevealed"):
        nodes[0].reveal(rid, honest, SALT[0])


def test_double_commit_late_commit_and_late_reveal(registered, nodes, mlp, mlp_inputs, clock):
    honest = _honest_hash(mlp, mlp_inputs)
    rid = registered.request(mlp.model_id, mlp_inputs, commit_window=100, reveal_window=100)
    nodes[0].commit(rid, honest, SALT[0])
    with reverts_with("AlreadyCommitted"):
        nodes[0].commit(rid, honest, SALT[1])
    info = registered.request_info(rid)
    clock.jump_past(info["commit_deadline"])
    with reverts_with("CommitClosed"):
        nodes[1].commit(rid, honest, SALT[1])
    clock.jump_past(info["reveal_deadline"])
    with reverts_with("RevealClosed"):
        nodes[0].reveal(rid, honest, SALT[0])


def test_commit_needs_free_stake(registered, mlp, mlp_inputs, chain):
    poor = registered.as_account(chain.w3.eth.accounts[6])
    rid = registered.request(mlp.model_id, mlp_inputs, commit_window=100, reveal_window=100)
    with reverts_with("InsufficientStake"):
        poor.commit(rid, "0x" + "11" * 32, SALT[0])
    poor.stake(registered.bond())
    poor.commit(rid, "0x" + "11" * 32, SALT[0])
    with reverts_with("InsufficientStake"):
        poor.chain.transact(poor.market.functions.unstake(1))  # the whole stake is locked


def test_reentrancy_on_payouts_is_refused(registered, mlp, mlp_inputs, chain, clock):
    abi, bytecode = artifact("ReentrantNode")["abi"], artifact("ReentrantNode")["bytecode"]
    address = chain.deploy(abi, bytecode, registered.market_address)
    attacker = chain.w3.eth.contract(address=address, abi=abi)
    chain.transact(attacker.functions.stake(), value=registered.bond())
    honest = _honest_hash(mlp, mlp_inputs)
    rid = registered.request(
        mlp.model_id, mlp_inputs, fee=10**15, quorum=1, commit_window=100, reveal_window=100
    )
    chain.transact(
        attacker.functions.commit(rid, registered.commitment_for(rid, honest, SALT[0], node=address))
    )
    clock.jump_past(registered.request_info(rid)["commit_deadline"])
    chain.transact(attacker.functions.reveal(rid, bytes.fromhex(honest[2:]), SALT[0]))
    registered.finalize(rid)
    owed = registered.withdrawable(address)
    assert owed == 10**15
    market_balance = chain.w3.eth.get_balance(registered.market_address)
    with reverts_with("ReentrancyGuardReentrantCall"):
        chain.transact(attacker.functions.withdraw())  # its receive() re-enters withdraw()
    assert registered.withdrawable(address) == owed  # nothing paid twice, nothing lost
    assert chain.w3.eth.get_balance(registered.market_address) == market_balance


def test_committed_artifacts_match_the_sources():
    from pathlib import Path

    from aivm_jax.chain import build_artifacts

    contracts = Path(__file__).resolve().parents[2] / "contracts"
    rebuilt = build_artifacts(contracts)
    for name, data in rebuilt.items():
        committed = artifact(name)
        assert committed["source_sha256"] == data["source_sha256"], (
            f"{name}: source changed, run scripts/build_contracts.py"
        )
        assert committed["bytecode"] == data["bytecode"] and committed["abi"] == data["abi"]
