"""Prove one inference row and verify a proof file offline.

A proof file is one JSON document (``format: "aivm-proof/1"``) that carries
everything a verifier needs besides the keys: the model id, the hash of the
verifying key it was made with, the claimed input and output, their row and
output hashes, and EZKL's proof. The claim is checked against the proof's
public instances, so editing the claimed output invalidates the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import InputShapeError, InvalidProofError, ProofError
from aivm_jax.program import Program
from aivm_jax.proofs._ezkl import call, ezkl_version, step
from aivm_jax.proofs._keys import load_keys
from aivm_jax.runtime import infer, output_hash, row_hashes

__all__ = ["PROOF_FORMAT", "VerifiedProof", "field_element", "prove", "read_proof", "verify", "write_proof"]

PROOF_FORMAT = "aivm-proof/1"
BN254_SCALAR_FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617


def field_element(value: int) -> str:
    """EZKL's encoding of an integer instance: ``value mod p``, 32 bytes little-endian, hex."""
    return (int(value) % BN254_SCALAR_FIELD).to_bytes(32, "little").hex()


def _instances(row_input: np.ndarray, row_output: np.ndarray) -> list[str]:
    return [field_element(v) for v in (*row_input.reshape(-1).tolist(), *row_output.reshape(-1).tolist())]


def prove(
    program: Program,
    inputs: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Prove that ``program`` maps the one-row batch ``inputs`` to the runtime's output.

    The witness is computed by EZKL and compared with `aivm_jax.infer` first:
    if they ever differed, nothing is proved (`ProofError`).

    Returns:
      The proof document (see the module docstring); `write_proof` saves it.
    """
    keys = load_keys(program.model_id, Path(cache_dir) if cache_dir else None)
    result = infer(program, inputs)
    if result.outputs.shape[0] != 1:
        raise InputShapeError(f"a proof covers one row; got a batch of {result.outputs.shape[0]}")
    row_input = np.asarray(inputs).reshape((1, *program.inputs[0].shape)).astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="aivm-prove-") as tmp:
        work = Path(tmp)
        (work / "input.json").write_text(json.dumps({"input_data": [row_input.reshape(-1).tolist()]}))
        with step(progress, "witness"):
            call(
                "gen_witness",
                str(work / "input.json"),
                str(keys.circuit.compiled),
                str(work / "witness.json"),
            )
        witness = json.loads((work / "witness.json").read_text())
        if witness["outputs"][0] != [field_element(v) for v in result.outputs.reshape(-1).tolist()]:
            raise ProofError(
                "the circuit's output differs from the runtime's; refusing to prove it (a bug: "
                "please report it with the model file and input)"
            )
        start = time.perf_counter()
        with step(progress, f"proving (2^{keys.logrows} rows)"):
            call(
                "prove",
                str(work / "witness.json"),
                str(keys.circuit.compiled),
                str(keys.pk),
                str(work / "proof.json"),
                str(keys.srs_path),
            )
        seconds = time.perf_counter() - start
        proof = json.loads((work / "proof.json").read_text())
    return {
        "format": PROOF_FORMAT,
        "model_id": program.model_id,
        "backend": {"name": "ezkl", "version": ezkl_version()},
        "vk_sha256": keys.vk_sha256,
        "settings_sha256": keys.settings_sha256,
        "dev_srs": keys.dev_srs,
        "input": row_input.tolist(),
        "outputs": result.outputs.tolist(),
        "output_name": program.outputs[0].name,
        "output_dtype": result.outputs.dtype.name,
        "row_hash": result.row_hashes[0],
        "output_hash": result.output_hash,
        "proving_seconds": round(seconds, 3),
        "proof": proof,
    }


def write_proof(document: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def read_proof(path: str | os.PathLike) -> dict[str, Any]:
    """Load a proof file; `InvalidProofError` if it is not one."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidProofError(f"no proof file at {path}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidProofError(f"{path} is not a proof file: {error}") from None
    if not isinstance(document, dict) or document.get("format") != PROOF_FORMAT:
        raise InvalidProofError(f"{path} is not an {PROOF_FORMAT} proof file")
    return document


@dataclasses.dataclass(frozen=True)
class VerifiedProof:
    """What a valid proof establishes: ``model_id`` maps ``input`` to ``outputs``."""

    model_id: str
    input: np.ndarray
    outputs: np.ndarray
    row_hash: str
    output_hash: str
    dev_srs: bool


def verify(
    document: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    srs: str | os.PathLike | None = None,
) -> VerifiedProof:
    """Check a proof document offline with the model's cached verifying key.

    Checks, in order: the document's fields; that it was made with this
    model's verifying key; that its claimed input and output are exactly the
    proof's public instances; that the claimed hashes follow from the claimed
    output; and EZKL's cryptographic verification.

    Raises:
      InvalidProofError: any check fails.
      KeysNotFoundError: this machine has no keys for the claimed model.
    """
    try:
        model_id = document["model_id"]
        claimed_input = np.asarray(document["input"], dtype=np.int64)
        outputs = np.asarray(document["outputs"], dtype=document["output_dtype"])
        instances = document["proof"]["instances"][0]
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise InvalidProofError(f"malformed proof document: {error}") from None
    keys = load_keys(model_id, Path(cache_dir) if cache_dir else None)
    if document.get("vk_sha256") != keys.vk_sha256:
        raise InvalidProofError(f"the proof was not made with the verifying key of model {model_id}")
    if [str(i).removeprefix("0x").lower() for i in instances] != _instances(claimed_input, outputs):
        raise InvalidProofError("the claimed input or output differs from the proof's public instances")
    rows = row_hashes(model_id, [str(document.get("output_name"))], [outputs])
    if rows != [document.get("row_hash")] or output_hash(model_id, rows) != document.get("output_hash"):
        raise InvalidProofError("the claimed row or output hash does not follow from the claimed output")
    with tempfile.TemporaryDirectory(prefix="aivm-verify-") as tmp:
        proof_path = Path(tmp) / "proof.json"
        proof_path.write_text(json.dumps(document["proof"]))
        try:
            ok = call(
                "verify", str(proof_path), str(keys.circuit.settings), str(keys.vk), str(srs or keys.srs_path)
            )
        except ProofError as error:
            raise InvalidProofError(f"the proof does not verify: {error}") from None
    if not ok:
        raise InvalidProofError("the proof does not verify")
    return VerifiedProof(
        model_id=model_id,
        input=claimed_input,
        outputs=outputs,
        row_hash=rows[0],
        output_hash=document["output_hash"],
        dev_srs=keys.dev_srs,
    )
