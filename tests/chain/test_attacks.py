"""Issue 19's attacks on the contracts, each performed on the embedded chain and shown to fail.

Findings 1-3, 6-8 and 10 of the review: a re-entering verifier, a verifier swapped under open
requests, requester-chosen windows and slashed bonds, copied commitments, copied proofs, late
proofs, ties, and a registry record that does not match the program. After each attack the
market still holds exactly what it owes (`_money.assert_solvent`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import aivm_jax
from aivm_jax import RegistrationMismatchError, TransactionRevertedError, UntrustedVerifierError
from aivm_jax.chain import Network, Windows, artifact, record_verifier

from ._money import assert_solvent

SALT = [os.urandom(32) for _ in range(8)]
FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617
FEE = 10**16


def reverts_with(name):
    return pytest.raises(TransactionRevertedError, match=name)


def _everyone(chain, *more):
    return [*chain.w3.eth.accounts[:8], *more]


def _deploy(chain, name, *args):
    address = chain.deploy(artifact(name)["abi"], artifact(name)["bytecode"], *args)
    return address, chain.w3.eth.contract(address=address, abi=artifact(name)["abi"])


def _instances(mlp, row):
    """The zk path's public inputs for one row: its input, then the output infer computes."""
    out = aivm_jax.infer(mlp, row).outputs
    return [int(v) % FIELD for v in (*row.reshape(-1).tolist(), *out.reshape(-1).tolist())]


def _stakes(network, handles):
    return [int(network.market.functions.stakeOf(h.chain.address).call()) for h in handles]


def _locked(network, handles):
    return [int(network.market.functions.lockedOf(h.chain.address).call()) for h in handles]


# ------------------------------------------------------------------ 1: re-entrancy on the zk path


def test_a_reentering_verifier_is_paid_once_and_unlocks_nothing_twice(
    registered, nodes, mlp, mlp_inputs, chain
):
    attacker_address, attacker = _deploy(chain, "ReentrantVerifier", registered.market_address)
    registered.set_verifier(mlp.model_id, attacker_address)
    row = mlp_inputs[:1]
    honest = aivm_jax.infer(mlp, row).output_hash
    # another request where the nodes (one of them the attacker's accomplice) have bonds locked
    other = registered.request(mlp.model_id, row, fee=FEE, commit_window=100, reveal_window=100)
    for node, salt in zip(nodes[:3], SALT):
        node.commit(other, honest, salt)
    target = registered.request(mlp.model_id, row, fee=FEE, commit_window=100, reveal_window=100)
    for node, salt in zip(nodes[:2], SALT[3:]):
        node.commit(target, honest, salt)
    chain.transact(attacker.functions.setOther(other))
    locked_before = _locked(registered, nodes)
    proof = b"\x01" * 64
    digest = registered.market.functions.proofDigest(target, attacker_address, proof).call()
    chain.transact(attacker.functions.commitProof(target, digest))
    chain.transact(attacker.functions.submitProof(target, proof, _instances(mlp, row)))

    assert registered.request_info(target)["status"] == "finalized"
    assert registered.request_info(other)["status"] == "open"  # the nested call on `other` failed
    assert registered.withdrawable(attacker_address) == FEE  # paid once, not once per level
    # the target's two bonds were unlocked once; the other request's three stay locked
    assert _locked(registered, nodes) == [
        b - registered.bond() if i < 2 else b for i, b in enumerate(locked_before)
    ]
    assert_solvent(registered, _everyone(chain, attacker_address))
    # honest nodes can still take out every free wei of their stake
    for node in nodes[:3]:
        free = registered.free_stake(node.chain.address)
        node.chain.transact(node.market.functions.unstake(free))
        node.withdraw()
    assert_solvent(registered, _everyone(chain, attacker_address))


# ------------------------------------------------------------------ 2: the verifier of a request


def test_a_request_is_checked_by_the_verifier_it_was_made_with(registered, mlp, mlp_inputs, chain):
    strict, _ = _deploy(chain, "RejectAllVerifier")
    lax, _ = _deploy(chain, "AcceptAllVerifier")
    row = mlp_inputs[:1]
    unverified = registered.request(mlp.model_id, row, fee=FEE, commit_window=100, reveal_window=100)
    registered.set_verifier(mlp.model_id, strict)
    rid = registered.request(mlp.model_id, row, fee=FEE, commit_window=100, reveal_window=100)
    registered.set_verifier(mlp.model_id, lax)  # the owner swaps in an accept-everything verifier
    owner = registered
    with reverts_with("InvalidProof"):
        owner.submit_proof_calldata(rid, b"forged", _instances(mlp, row))
    with reverts_with("NoVerifier"):
        owner.submit_proof_calldata(unverified, b"forged", _instances(mlp, row))
    assert registered.request_info(rid)["status"] == "open"
    assert registered.request_info(rid)["verifier"] == strict
    assert_solvent(registered, _everyone(chain))


def test_the_registry_takes_only_contracts_as_verifiers(registered, mlp, chain):
    with reverts_with("NotAContract"):
        registered.set_verifier(mlp.model_id, chain.w3.eth.accounts[7])


def test_aivm_checks_the_registered_verifier_against_the_one_it_generated(registered, mlp, chain, tmp_path):
    from eth_utils import keccak

    records = tmp_path / "verifiers.json"
    assert registered.check_verifier(mlp.model_id, records) is None  # no verifier: nothing to check
    good, _ = _deploy(chain, "RejectAllVerifier")
    registered.set_verifier(mlp.model_id, good)
    with pytest.raises(UntrustedVerifierError, match="has not generated"):
        registered.check_verifier(mlp.model_id, records)
    runtime = "0x" + keccak(bytes(chain.w3.eth.get_code(good))).hex()
    record_verifier(mlp.model_id, runtime, None, records)
    assert registered.check_verifier(mlp.model_id, records) == good
    evil, _ = _deploy(chain, "AcceptAllVerifier")
    registered.set_verifier(mlp.model_id, evil)
    with pytest.raises(UntrustedVerifierError, match="not the one its program generates"):
        registered.check_verifier(mlp.model_id, records)
    assert json.loads(records.read_text())[mlp.model_id]["codehash"] == runtime


# ------------------------------------------------------------------ 3: windows and slashed bonds


@pytest.mark.parametrize(
    "commit_window, reveal_window", [(100, 1), (1, 100), (100, 3_000 * 365 * 86_400), (10**9, 100)]
)
def test_windows_outside_the_protocol_bounds_are_refused(
    registered, mlp, mlp_inputs, commit_window, reveal_window
):
    with reverts_with("BadWindows"):
        registered.request(
            mlp.model_id, mlp_inputs, fee=0, commit_window=commit_window, reveal_window=reveal_window
        )


def test_the_bounds_are_set_at_deployment(chain):
    network = Network.deploy(
        chain, windows=Windows(min_commit=5, max_commit=50, min_reveal=6, max_reveal=60, proof=7)
    )
    assert network.windows() == Windows(min_commit=5, max_commit=50, min_reveal=6, max_reveal=60, proof=7)
    with pytest.raises(ValueError):
        Windows(min_commit=0)


def test_the_requester_never_collects_slashed_bonds(registered, nodes, mlp, mlp_inputs, clock, chain):
    rid = registered.request(mlp.model_id, mlp_inputs, fee=FEE, quorum=2, commit_window=100, reveal_window=10)
    for node, salt in zip(nodes[:3], SALT):
        node.commit(rid, aivm_jax.infer(mlp, mlp_inputs).output_hash, salt)
    clock.jump_past(registered.request_info(rid)["reveal_deadline"])  # nobody could reveal in time
    before = registered.withdrawable(chain.address)
    registered.finalize(rid)
    assert registered.request_info(rid)["status"] == "failed"
    assert registered.withdrawable(chain.address) - before == FEE  # the fee back, no bond
    assert registered.market.functions.burned().call() == 3 * registered.bond()
    assert_solvent(registered, _everyone(chain))


# ------------------------------------------------------------------ 6: copied commitments


def test_a_copied_commitment_cannot_be_revealed(registered, nodes, mlp, mlp_inputs, clock, chain):
    honest = aivm_jax.infer(mlp, mlp_inputs).output_hash
    rid = registered.request(
        mlp.model_id, mlp_inputs, fee=FEE, quorum=1, commit_window=100, reveal_window=100
    )
    nodes[0].commit(rid, honest, SALT[0])
    copied = registered.market.functions.commitments(rid, nodes[0].chain.address).call()
    nodes[1].chain.transact(nodes[1].market.functions.commit(rid, copied))  # the copier's bond is locked
    clock.jump_past(registered.request_info(rid)["commit_deadline"])
    nodes[0].reveal(rid, honest, SALT[0])
    with reverts_with("RevealMismatch"):  # replaying the reveal from the event
        nodes[1].reveal(rid, honest, SALT[0])
    # and a commitment replayed on another request does not open there either
    later = registered.request(
        mlp.model_id, mlp_inputs, fee=FEE, quorum=1, commit_window=100, reveal_window=100
    )
    nodes[0].chain.transact(nodes[0].market.functions.commit(later, copied))
    clock.jump_past(registered.request_info(later)["commit_deadline"])
    with reverts_with("RevealMismatch"):
        nodes[0].reveal(later, honest, SALT[0])
    clock.jump_past(registered.request_info(rid)["reveal_deadline"])
    stakes = _stakes(registered, nodes[:2])
    registered.finalize(rid)
    assert _stakes(registered, nodes[:2]) == [stakes[0], stakes[1] - registered.bond()]  # the copier pays
    assert registered.withdrawable(nodes[0].chain.address) == FEE + registered.bond()
    assert_solvent(registered, _everyone(chain))


# ------------------------------------------------------------------ 7: proofs


@pytest.fixture
def accept_all(registered, mlp, chain):
    """The MLP with an accept-everything verifier, to test the zk path's accounting cheaply
    (the real EZKL verifiers are exercised in tests/proofs/test_zk_market.py)."""
    address, _ = _deploy(chain, "AcceptAllVerifier")
    registered.set_verifier(mlp.model_id, address)
    return address


def test_a_copied_proof_transaction_cannot_take_the_fee(registered, accept_all, mlp, mlp_inputs, chain):
    row = mlp_inputs[:1]
    rid = registered.request(mlp.model_id, row, fee=FEE, commit_window=100, reveal_window=100)
    thief = registered.as_account(chain.w3.eth.accounts[6])
    proof, instances = b"\x02" * 32, _instances(mlp, row)
    with reverts_with("ProofNotCommitted"):  # the copy of the author's submitProof, sent first
        thief.chain.transact(thief.market.functions.submitProof(rid, proof, instances, []))
    other_digest = thief.market.functions.proofDigest(rid, thief.chain.address, b"another proof").call()
    thief.chain.transact(thief.market.functions.commitProof(rid, other_digest))
    with reverts_with("ProofNotCommitted"):  # a commitment to something else does not cover it
        thief.chain.transact(thief.market.functions.submitProof(rid, proof, instances, []))
    author = registered.as_account(chain.w3.eth.accounts[5])
    author_digest = author.market.functions.proofDigest(rid, author.chain.address, proof).call()
    with reverts_with("ProofNotCommitted"):  # the author's digest is bound to the author
        thief.chain.transact(thief.market.functions.commitProof(rid, author_digest))
        thief.chain.transact(thief.market.functions.submitProof(rid, proof, instances, []))
    author.submit_proof_calldata(rid, proof, instances)
    assert registered.withdrawable(author.chain.address) == FEE
    assert registered.withdrawable(thief.chain.address) == 0
    assert_solvent(registered, _everyone(chain))


def test_a_late_proof_pays_the_matching_reveals_and_slashes_the_rest(
    registered, accept_all, nodes, mlp, mlp_inputs, clock, chain
):
    row = mlp_inputs[:1]
    honest = aivm_jax.infer(mlp, row).output_hash
    wrong = "0x" + "ee" * 32
    rid = registered.request(mlp.model_id, row, fee=FEE, quorum=3, commit_window=100, reveal_window=100)
    answers = [honest, wrong, wrong, None]  # two liars outvote one honest node; one never reveals
    for node, answer, salt in zip(nodes, answers, SALT):
        node.commit(rid, answer or honest, salt)
    clock.jump_past(registered.request_info(rid)["commit_deadline"])
    for node, answer, salt in zip(nodes, answers, SALT):
        if answer:
            node.reveal(rid, answer, salt)
    clock.jump_past(registered.request_info(rid)["reveal_deadline"])
    stakes = _stakes(registered, nodes)
    prover = registered.as_account(chain.w3.eth.accounts[5])
    prover.submit_proof_calldata(rid, b"\x03" * 32, _instances(mlp, row))
    info = registered.request_info(rid)
    assert info["status"] == "finalized" and info["by_proof"] and info["output_hash"] == honest
    bond = registered.bond()
    assert _stakes(registered, nodes) == [stakes[0], stakes[1] - bond, stakes[2] - bond, stakes[3] - bond]
    assert registered.withdrawable(nodes[0].chain.address) == 3 * bond  # the honest node takes the bonds
    assert registered.withdrawable(prover.chain.address) == FEE  # the prover takes the fee
    assert _locked(registered, nodes) == [0, 0, 0, 0]
    assert_solvent(registered, _everyone(chain))


# ------------------------------------------------------------------ 8: ties


def _tie(registered, nodes, mlp, row, clock):
    honest = aivm_jax.infer(mlp, row).output_hash
    answers = [honest, honest, "0x" + "ee" * 32, "0x" + "ee" * 32]
    rid = registered.request(mlp.model_id, row, fee=FEE, quorum=2, commit_window=100, reveal_window=100)
    for node, answer, salt in zip(nodes, answers, SALT):
        node.commit(rid, answer, salt)
    clock.jump_past(registered.request_info(rid)["commit_deadline"])
    for node, answer, salt in zip(nodes, answers, SALT):
        node.reveal(rid, answer, salt)
    return rid, honest


def test_a_tie_waits_for_a_proof_which_makes_the_losing_side_pay(
    registered, accept_all, nodes, mlp, mlp_inputs, clock, chain
):
    row = mlp_inputs[:1]
    rid, honest = _tie(registered, nodes, mlp, row, clock)
    with reverts_with("AwaitingProof"):
        registered.finalize(rid)
    stakes = _stakes(registered, nodes)
    registered.as_account(chain.w3.eth.accounts[5]).submit_proof_calldata(
        rid, b"\x04" * 32, _instances(mlp, row)
    )
    bond = registered.bond()
    assert registered.request_info(rid)["output_hash"] == honest
    assert _stakes(registered, nodes) == [stakes[0], stakes[1], stakes[2] - bond, stakes[3] - bond]
    assert [registered.withdrawable(n.chain.address) for n in nodes] == [bond, bond, 0, 0]
    assert_solvent(registered, _everyone(chain))


def test_an_unresolved_tie_fails_after_the_proof_window_and_burns_the_minority(
    registered, accept_all, nodes, mlp, mlp_inputs, clock, chain
):
    row = mlp_inputs[:1]
    honest = aivm_jax.infer(mlp, row).output_hash
    answers = [honest, honest, "0x" + "ee" * 32, "0x" + "ee" * 32, "0x" + "dd" * 32]
    fifth = registered.as_account(chain.w3.eth.accounts[5])
    fifth.stake(registered.bond())
    handles = [*nodes, fifth]
    rid = registered.request(mlp.model_id, row, fee=FEE, quorum=2, commit_window=100, reveal_window=100)
    for node, answer, salt in zip(handles, answers, SALT):
        node.commit(rid, answer, salt)
    info = registered.request_info(rid)
    clock.jump_past(info["commit_deadline"])
    for node, answer, salt in zip(handles, answers, SALT):
        node.reveal(rid, answer, salt)
    clock.jump_past(info["reveal_deadline"] + registered.windows().proof)
    stakes = _stakes(registered, handles)
    registered.finalize(rid)
    bond = registered.bond()
    assert registered.request_info(rid)["status"] == "failed"
    # the tied sides cannot be told apart without a judge; the hash with fewer reveals loses its bond
    assert _stakes(registered, handles) == [*stakes[:4], stakes[4] - bond]
    assert registered.market.functions.burned().call() == bond
    assert_solvent(registered, _everyone(chain))


# ------------------------------------------------------------------ 10: the registry's record


def test_a_registry_record_that_differs_from_the_program_is_caught(network, mlp, chain):
    record = aivm_jax.chain._network.registration_of(mlp)
    wrong_header = b"\x00" + record["output_header"][1:]
    network.chain.transact(
        network.registry.functions.register(
            bytes.fromhex(mlp.model_id[2:]),
            "file:///x.aivm",
            record["size"],
            1,
            "{}",
            (record["input_size"], record["output_size"], wrong_header),
            bytes.fromhex(record["commitment"][2:]),
        )
    )
    with pytest.raises(RegistrationMismatchError, match="output_header"):
        network.check_registration(mlp)


def test_a_registered_model_commitment_that_differs_from_the_program_is_caught(network, mlp):
    """A wrong commitment would let an owner's dispute games open weights the program lacks:
    nodes and requesters refuse the model, and the registry refuses no commitment at all."""
    record = aivm_jax.chain._network.registration_of(mlp)
    args = [bytes.fromhex(mlp.model_id[2:]), "file:///x.aivm", record["size"], 1, "{}"]
    shape = (record["input_size"], record["output_size"], record["output_header"])
    with pytest.raises(TransactionRevertedError, match="ZeroCommitment"):
        network.chain.transact(network.registry.functions.register(*args, shape, bytes(32)))
    wrong = bytes.fromhex(record["commitment"][2:])[::-1]
    network.chain.transact(network.registry.functions.register(*args, shape, wrong))
    assert network.chain.call(network.registry.functions.commitmentOf(args[0])) == wrong
    with pytest.raises(RegistrationMismatchError, match="commitment registered"):
        network.check_registration(mlp)


def test_the_honest_registration_checks_out(registered, mlp):
    registered.check_registration(mlp)
    assert registered.model(mlp.model_id)["size"] == len(aivm_jax.program.to_bytes(mlp))
    assert np.prod(mlp.inputs[0].shape) == registered.model(mlp.model_id)["input_size"]
