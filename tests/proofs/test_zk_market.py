"""The market's zk path: a proof accepted by the model's registered verifier finalizes at once."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import aivm_jax
from aivm_jax import TransactionRevertedError, proofs
from aivm_jax.chain import Chain, Network
from aivm_jax.conformance import DATA_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market(keys, programs, tmp_path_factory):
    out = tmp_path_factory.mktemp("zk-verifier")
    proofs.write_verifier(keys["digits-mlp"], out)
    artifact = json.loads((out / "Verifier.json").read_text())
    chain = Chain.embedded()
    network = Network.deploy(chain)
    verifier = chain.deploy(artifact["abi"], artifact["bytecode"])
    vka = proofs.read_vka(keys["digits-mlp"].vka)
    chain.transact(chain.w3.eth.contract(address=verifier, abi=artifact["abi"]).functions.registerVka(vka))
    program = programs["digits-mlp"]
    network.register(program, str(DATA_DIR / "digits-mlp.aivm"))
    network.set_verifier(program.model_id, verifier, vka)
    return network


def test_a_valid_proof_finalizes_the_request(market, programs, keys, proof_documents):
    program = programs["digits-mlp"]
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1]
    rid = market.request(program.model_id, x, fee=10**15, commit_window=600, reveal_window=600)
    prover = market.as_account(market.chain.w3.eth.accounts[3])
    prover.submit_proof(rid, proof_documents["digits-mlp"], keys["digits-mlp"])
    info = market.request_info(rid)
    assert info["status"] == "finalized" and info["by_proof"]
    # the contract recomputed the AIVM output hash from the proven output: the same bits as infer
    assert info["output_hash"] == aivm_jax.infer(program, x).output_hash
    assert market.withdrawable(prover.chain.address) == 10**15


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
