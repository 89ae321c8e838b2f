"""The EVM verifier on the embedded chain (py-evm): valid proofs pass, altered ones fail."""

from __future__ import annotations

import copy
import json

import pytest
from web3 import EthereumTesterProvider, Web3

from aivm_jax import proofs

pytestmark = pytest.mark.slow

CONTRACT_SIZE_LIMIT = 24_576


@pytest.fixture(scope="module")
def chain(keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("verifier")
    info = proofs.write_verifier(keys["digits-mlp"], out)
    artifact = json.loads((out / "Verifier.json").read_text())
    w3 = Web3(EthereumTesterProvider())
    sender = w3.eth.accounts[0]
    tx = (
        w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        .constructor()
        .transact({"from": sender})
    )
    address = w3.eth.get_transaction_receipt(tx).contractAddress
    verifier = w3.eth.contract(address=address, abi=artifact["abi"])
    vkas = {}
    for name, k in keys.items():
        vka = proofs.read_vka(k.vka)
        verifier.functions.registerVka(vka).transact({"from": sender})
        vkas[name] = vka
    return {"w3": w3, "address": address, "info": info, "verifier": verifier}


def accepts(chain, calldata: bytes) -> bool:
    try:
        result = chain["w3"].eth.call({"to": chain["address"], "data": "0x" + calldata.hex()})
    except Exception:  # a revert: web3 raises ContractLogicError / ValueError depending on the backend
        return False
    return int.from_bytes(result[:32], "big") == 1


def test_verifier_fits_the_contract_size_limit(chain):
    assert chain["info"]["deployed_bytecode_bytes"] < CONTRACT_SIZE_LIMIT


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_valid_proofs_verify_on_chain(chain, keys, proof_documents, name):
    assert accepts(chain, proofs.evm_calldata(proof_documents[name], keys[name]))


def test_tampered_calldata_is_rejected(chain, keys, proof_documents):
    calldata = bytearray(proofs.evm_calldata(proof_documents["digits-mlp"], keys["digits-mlp"]))
    calldata[4 + 32 * 8 + 5] ^= 0x01  # inside the proof bytes
    assert not accepts(chain, bytes(calldata))


def test_altered_output_is_rejected_on_chain(chain, keys, proof_documents):
    document = copy.deepcopy(proof_documents["digits-mlp"])
    instances = document["proof"]["instances"][0]
    instances[-1] = proofs.field_element(document["outputs"][0][-1] + 1)
    assert not accepts(chain, proofs.evm_calldata(document, keys["digits-mlp"]))


def test_proof_for_another_model_is_rejected_on_chain(chain, keys, proof_documents):
    # the CNN's proof presented with the MLP's verifying key artifact
    assert not accepts(chain, proofs.evm_calldata(proof_documents["digits-cnn"], keys["digits-mlp"]))
