"""Real EZKL proofs of zoo models: valid ones verify, altered ones are rejected, offline."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest

import aivm_jax
from aivm_jax import InvalidProofError, KeysNotFoundError, SrsError, proofs
from aivm_jax.conformance import DATA_DIR
from aivm_jax.proofs._export import CIRCUIT_VERSION

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_proof_claims_exactly_what_infer_returns(programs, proof_documents, name):
    document = proof_documents[name]
    x = np.load(DATA_DIR / f"{name}.inputs.npy")[:1]
    result = aivm_jax.infer(programs[name], x)
    assert document["model_id"] == programs[name].model_id
    assert document["outputs"] == result.outputs.tolist()
    assert document["output_hash"] == result.output_hash
    assert document["row_hash"] == result.row_hashes[0]


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_valid_proof_verifies_offline(proof_documents, proof_cache, name, tmp_path):
    path = tmp_path / "proof.json"
    proofs.write_proof(proof_documents[name], path)
    checked = proofs.verify(proofs.read_proof(path), cache_dir=proof_cache)
    np.testing.assert_array_equal(checked.outputs, proof_documents[name]["outputs"])
    assert checked.dev_srs


def test_tampered_proof_bytes_are_rejected(proof_documents, proof_cache):
    document = copy.deepcopy(proof_documents["digits-mlp"])
    proof_hex = document["proof"]["hex_proof"]
    flipped = proof_hex[:100] + ("1" if proof_hex[100] != "1" else "2") + proof_hex[101:]
    document["proof"]["hex_proof"] = flipped
    document["proof"]["proof"] = list(bytes.fromhex(flipped[2:]))
    with pytest.raises(InvalidProofError):
        proofs.verify(document, cache_dir=proof_cache)


def test_altered_claimed_output_is_rejected(proof_documents, proof_cache):
    document = copy.deepcopy(proof_documents["digits-mlp"])
    document["outputs"][0][0] += 1
    with pytest.raises(InvalidProofError, match="public instances"):
        proofs.verify(document, cache_dir=proof_cache)


def test_altered_output_in_claim_and_instances_is_rejected(proof_documents, proof_cache):
    document = copy.deepcopy(proof_documents["digits-mlp"])
    document["outputs"][0][0] += 1
    n_inputs = len(np.asarray(document["input"]).reshape(-1))
    document["proof"]["instances"][0][n_inputs] = proofs.field_element(document["outputs"][0][0])
    from aivm_jax.runtime import output_hash, row_hashes

    rows = row_hashes(document["model_id"], ["y"], [np.asarray(document["outputs"], np.int8)])
    document["row_hash"], document["output_hash"] = rows[0], output_hash(document["model_id"], rows)
    with pytest.raises(InvalidProofError, match="does not verify"):
        proofs.verify(document, cache_dir=proof_cache)


def test_altered_hash_is_rejected(proof_documents, proof_cache):
    document = copy.deepcopy(proof_documents["digits-mlp"])
    document["output_hash"] = "0x" + "00" * 32
    with pytest.raises(InvalidProofError, match="hash"):
        proofs.verify(document, cache_dir=proof_cache)


def test_proof_for_another_model_is_rejected(proof_documents, keys, proof_cache):
    document = copy.deepcopy(proof_documents["digits-cnn"])
    document["model_id"] = keys["digits-mlp"].model_id
    with pytest.raises(InvalidProofError, match="verifying key"):
        proofs.verify(document, cache_dir=proof_cache)
    document["vk_sha256"] = keys["digits-mlp"].vk_sha256  # a forger also edits the key hash
    with pytest.raises(InvalidProofError):
        proofs.verify(document, cache_dir=proof_cache)


def test_unknown_model_has_no_keys(proof_documents, tmp_path):
    with pytest.raises(KeysNotFoundError, match="aivm prove setup"):
        proofs.verify(proof_documents["digits-mlp"], cache_dir=tmp_path)


def test_setup_is_cached_and_reused(programs, keys, proof_cache):
    messages = []
    start = time.perf_counter()
    again = proofs.setup(
        programs["digits-mlp"], dev_srs=True, cache_dir=proof_cache, progress=messages.append
    )
    assert time.perf_counter() - start < 5
    assert again.vk_sha256 == keys["digits-mlp"].vk_sha256
    assert any("reusing" in m for m in messages)


def test_srs_must_be_chosen_and_large_enough(programs, tmp_path):
    with pytest.raises(SrsError, match="--dev-srs"):
        proofs.setup(programs["digits-mlp"], cache_dir=tmp_path)
    with pytest.raises(SrsError, match="no SRS file"):
        proofs.setup(programs["digits-mlp"], srs=tmp_path / "missing.srs", cache_dir=tmp_path)
    from aivm_jax.proofs._ezkl import call

    small = tmp_path / "k8.srs"
    call("gen_srs", str(small), 8)
    with pytest.raises(SrsError, match=r"2\^\d+ points"):
        proofs.setup(programs["digits-mlp"], srs=small, cache_dir=tmp_path)
    assert not list((tmp_path / "proofs").glob("0x*"))  # a failed setup leaves nothing behind


def test_prove_needs_one_row(programs, keys, proof_cache):
    x = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:2]
    with pytest.raises(aivm_jax.InputShapeError, match="one row"):
        proofs.prove(programs["digits-mlp"], x, cache_dir=proof_cache)


@pytest.mark.slow
def test_setup_makes_new_keys_when_the_cached_ones_are_from_another_circuit_version(programs, tmp_path):
    program = programs["digits-mlp"]
    first = proofs.setup(program, dev_srs=True, cache_dir=tmp_path)
    assert first.circuit_version == CIRCUIT_VERSION
    meta_path = first.directory / "keys.json"
    meta = json.loads(meta_path.read_text())
    meta["circuit_version"] = CIRCUIT_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    assert proofs.load_keys(program.model_id, tmp_path).circuit_version == CIRCUIT_VERSION - 1
    messages: list[str] = []
    again = proofs.setup(program, dev_srs=True, cache_dir=tmp_path, progress=messages.append)
    assert any("circuit version" in m for m in messages)
    assert not any(m.startswith("reusing") for m in messages)
    assert again.circuit_version == CIRCUIT_VERSION
    assert (
        proofs.setup(program, dev_srs=True, cache_dir=tmp_path, progress=messages.append).directory
        == again.directory
    )
    assert messages[-1].startswith("reusing")
