"""The market's zk path: a proof accepted by the model's registered verifier finalizes at once."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from eth_abi import decode

import aivm_jax
from aivm_jax import TransactionRevertedError, proofs
from aivm_jax.chain import Chain, Network, record_verifier
from aivm_jax.conformance import DATA_DIR

pytestmark = pytest.mark.slow


def _verifier(chain, keys, out, reusable=False):
    proofs.write_verifier(keys, out, reusable=reusable)
    artifact = json.loads((out / "Verifier.json").read_text())
    return chain.deploy(artifact["abi"], artifact["bytecode"]), artifact


def _codehash(artifact):
    from eth_utils import keccak

    return "0x" + keccak(bytes.fromhex(artifact["deployedBytecode"][2:])).hex()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The verifiers this machine generated (what `aivm prove verifier` records)."""
    return tmp_path_factory.mktemp("records") / "verifiers.json"


@pytest.fixture(scope="module")
def market(keys, programs, records, tmp_path_factory):
    """digits-mlp with its own verifier; digits-cnn with the reusable verifier and its VKA."""
    chain = Chain.embedded()
    network = Network.deploy(chain)
    for name in ("digits-mlp", "digits-cnn"):
        network.register(programs[name], str(DATA_DIR / f"{name}.aivm"))
    verifier, artifact = _verifier(chain, keys["digits-mlp"], tmp_path_factory.mktemp("own"))
    network.set_verifier(programs["digits-mlp"].model_id, verifier)
    record_verifier(programs["digits-mlp"].model_id, _codehash(artifact), None, records)
    verifier, artifact = _verifier(
        chain, keys["digits-cnn"], tmp_path_factory.mktemp("reusable"), reusable=True
    )
    vka = proofs.read_vka(keys["digits-cnn"].vka)
    chain.transact(chain.w3.eth.contract(address=verifier, abi=artifact["abi"]).functions.registerVka(vka))
    network.set_verifier(programs["digits-cnn"].model_id, verifier, vka)
    from eth_utils import keccak

    record_verifier(
        programs["digits-cnn"].model_id, _codehash(artifact), "0x" + keccak(b"".join(vka)).hex(), records
    )
    return network


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])  # own verifier, reusable verifier
def test_the_deployed_verifier_is_the_one_the_program_generates(market, programs, records, name):
    # `aivm prove verifier` is deterministic: the code on chain hashes to the compiled artifact's
    assert market.check_verifier(programs[name].model_id, records) is not None


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])  # own verifier, reusable verifier
def test_a_valid_proof_finalizes_the_request(market, programs, keys, proof_documents, name):
    program = programs[name]
    x = np.load(DATA_DIR / f"{name}.inputs.npy")[:1]
    rid = market.request(program.model_id, x, fee=10**15, commit_window=600, reveal_window=600)
    prover = market.as_account(market.chain.w3.eth.accounts[3])
    before = market.withdrawable(prover.chain.address)
    prover.submit_proof(rid, proof_documents[name], keys[name])
    info = market.request_info(rid)
    assert info["status"] == "finalized" and info["by_proof"]
    # the contract recomputed the AIVM output hash from the proven output: the same bits as infer
    assert info["output_hash"] == aivm_jax.infer(program, x).output_hash
    assert market.withdrawable(prover.chain.address) - before == 10**15


def test_a_vka_is_refused_for_a_model_with_its_own_verifier(market, programs, keys, proof_documents):
    program = programs["digits-mlp"]
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1]
    rid = market.request(program.model_id, x, commit_window=600, reveal_window=600)
    calldata = proofs.evm_calldata(proof_documents["digits-mlp"], keys["digits-mlp"])
    proof, instances = decode(["bytes", "uint256[]"], calldata[4:])
    vka = proofs.read_vka(keys["digits-mlp"].vka)
    with pytest.raises(TransactionRevertedError, match="WrongVka"):
        market.submit_proof_calldata(rid, proof, list(instances), vka)


def test_a_proof_of_another_input_is_refused(market, programs, keys, proof_documents):
    program = programs["digits-mlp"]
    other = np.load(DATA_DIR / "digits-mlp.inputs.npy")[1:2]
    rid = market.request(program.model_id, other, commit_window=600, reveal_window=600)
    with pytest.raises(TransactionRevertedError, match="InputMismatch"):
        market.submit_proof(rid, proof_documents["digits-mlp"], keys["digits-mlp"])


def test_an_altered_output_is_refused(market, programs, keys, proof_documents):
    program = programs["digits-mlp"]
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1]
    rid = market.request(program.model_id, x, commit_window=600, reveal_window=600)
    document = copy.deepcopy(proof_documents["digits-mlp"])
    document["proof"]["instances"][0][-1] = proofs.field_element(document["outputs"][0][-1] + 1)
    with pytest.raises(TransactionRevertedError, match="InvalidProof"):
        market.submit_proof(rid, document, keys["digits-mlp"])
    assert market.request_info(rid)["status"] == "open"


def test_a_proof_for_another_model_is_refused(market, programs, keys, proof_documents):
    program = programs["digits-mlp"]
    x = np.load(DATA_DIR / "digits-cnn.inputs.npy")[:1].reshape(1, 64)
    rid = market.request(program.model_id, x, commit_window=600, reveal_window=600)
    with pytest.raises(TransactionRevertedError, match="WrongVka|InvalidProof"):
        market.submit_proof(rid, proof_documents["digits-cnn"], keys["digits-cnn"])


def test_a_proof_for_another_model_is_refused_by_the_reusable_verifier(
    market, programs, keys, proof_documents
):
    program = programs["digits-cnn"]
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1].reshape(1, 8, 8, 1)
    rid = market.request(program.model_id, x, commit_window=600, reveal_window=600)
    with pytest.raises(TransactionRevertedError, match="WrongVka"):
        market.submit_proof(rid, proof_documents["digits-mlp"], keys["digits-mlp"])
