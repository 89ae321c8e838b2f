"""The EVM verifiers on the embedded chain (py-evm): valid proofs pass, altered ones fail.

Each model's own verifier, and EZKL's reusable verifier with both models' VKAs registered.
"""

from __future__ import annotations

import copy
import json

import pytest
from web3 import EthereumTesterProvider, Web3

from aivm_jax import proofs
from aivm_jax._errors import ProofError

pytestmark = pytest.mark.slow

GAS_TARGET = 600_000
MODELS = ["digits-mlp", "digits-cnn"]


def _deploy(w3, out):
    artifact = json.loads((out / "Verifier.json").read_text())
    sender = w3.eth.accounts[0]
    tx = (
        w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        .constructor()
        .transact({"from": sender})
    )
    address = w3.eth.get_transaction_receipt(tx).contractAddress
    return w3.eth.contract(address=address, abi=artifact["abi"])


@pytest.fixture(scope="module")
def chain(keys, tmp_path_factory):
    w3 = Web3(EthereumTesterProvider())
    own, info = {}, {}
    for name in MODELS:
        out = tmp_path_factory.mktemp(f"own-{name}")
        info[name] = proofs.write_verifier(keys[name], out)
        own[name] = _deploy(w3, out)
    out = tmp_path_factory.mktemp("reusable")
    info["reusable"] = proofs.write_verifier(keys["digits-mlp"], out, reusable=True)
    reusable = _deploy(w3, out)
    for name in MODELS:
        reusable.functions.registerVka(proofs.read_vka(keys[name].vka)).transact({"from": w3.eth.accounts[0]})
    return {"w3": w3, "own": own, "reusable": reusable, "info": info}


def _call(chain, verifier, calldata: bytes) -> tuple[bool, int]:
    """(accepted, gas) of a verifyProof call; a revert is a rejection."""
    tx = {"to": verifier.address, "data": "0x" + calldata.hex()}
    try:
        result = chain["w3"].eth.call(tx)
    except Exception:  # a revert: web3 raises ContractLogicError / ValueError depending on the backend
        return False, 0
    accepted = int.from_bytes(result[:32], "big") == 1
    return accepted, chain["w3"].eth.estimate_gas(tx) if accepted else 0


def accepts(chain, name, document, keys) -> bool:
    """Whether the own verifier of ``name`` and the reusable one (with ``keys``' VKA) both accept."""
    own, _ = _call(chain, chain["own"][name], proofs.evm_calldata(document, keys))
    reusable, _ = _call(chain, chain["reusable"], proofs.evm_calldata(document, keys, reusable=True))
    assert own == reusable, "the two verifiers disagree"
    return own


@pytest.mark.parametrize("kind", ["digits-mlp", "digits-cnn", "reusable"])
def test_verifiers_fit_the_contract_size_limit(chain, kind):
    assert chain["info"][kind]["deployed_bytecode_bytes"] <= proofs.CONTRACT_SIZE_LIMIT
    assert chain["info"][kind]["kind"] == ("reusable" if kind == "reusable" else "own")


@pytest.mark.parametrize("name", MODELS)
def test_valid_proofs_verify_on_chain_under_the_gas_target(chain, keys, proof_documents, name):
    accepted, gas = _call(chain, chain["own"][name], proofs.evm_calldata(proof_documents[name], keys[name]))
    assert accepted and gas < GAS_TARGET
    calldata = proofs.evm_calldata(proof_documents[name], keys[name], reusable=True)
    accepted, reusable_gas = _call(chain, chain["reusable"], calldata)
    assert accepted and reusable_gas > gas  # the reusable verifier also reads the VKA


def test_tampered_calldata_is_rejected(chain, keys, proof_documents):
    for reusable in (False, True):
        calldata = bytearray(proofs.evm_calldata(proof_documents["digits-mlp"], keys["digits-mlp"], reusable))
        calldata[4 + 32 * 8 + 5] ^= 0x01  # inside the proof bytes
        verifier = chain["reusable"] if reusable else chain["own"]["digits-mlp"]
        assert _call(chain, verifier, bytes(calldata)) == (False, 0)


@pytest.mark.parametrize("name", MODELS)
def test_altered_output_is_rejected_on_chain(chain, keys, proof_documents, name):
    document = copy.deepcopy(proof_documents[name])
    instances = document["proof"]["instances"][0]
    instances[-1] = proofs.field_element(document["outputs"][0][-1] + 1)
    assert not accepts(chain, name, document, keys[name])


def test_proof_for_another_model_is_rejected_on_chain(chain, keys, proof_documents):
    # the CNN's proof presented to the MLP's own verifier, and with the MLP's VKA to the reusable one
    assert not accepts(chain, "digits-mlp", proof_documents["digits-cnn"], keys["digits-mlp"])


def test_an_own_verifier_over_the_size_limit_is_refused(keys, tmp_path, monkeypatch):
    monkeypatch.setattr("aivm_jax.proofs._evm.CONTRACT_SIZE_LIMIT", 1000)
    with pytest.raises(ProofError, match="--reusable"):
        proofs.write_verifier(keys["digits-mlp"], tmp_path)
