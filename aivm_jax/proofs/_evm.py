"""The on-chain verifier: EZKL's Solidity verifiers, compiled with the pinned solc-js.

Two kinds, both EZKL's:

* the model's **own** verifier (the default): its verifying key is in its
  code, and ``verifyProof(proof, instances)`` checks a proof. The cheaper to
  call (digits-mlp 521k gas, digits-cnn 522k), but one contract per model,
  and only circuits with few columns fit the 24,576-byte contract limit
  (`CONTRACT_SIZE_LIMIT`; a circuit folded into several column sets does not);
* the **reusable** verifier: one contract for many circuits; each model
  registers its verifying key artifact (VKA, a ``bytes32[]``) once with
  ``registerVka``, and ``verifyProof(proof, instances, vka)`` checks a proof
  against a registered VKA (about 11 KB; every call also pays for the VKA's
  calldata, about 1.25x the gas).

Compilation runs ``node compile.js`` from ``aivm_jax/proofs/solcjs``, whose
``package.json`` pins solc-js; ``scripts/_venv.sh`` installs it with ``npm ci``.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aivm_jax._errors import ProofError, ToolchainError
from aivm_jax.proofs._ezkl import call, step
from aivm_jax.proofs._keys import ProvingKeys

__all__ = [
    "CONTRACT_SIZE_LIMIT",
    "SOLCJS_DIR",
    "compile_solidity",
    "evm_calldata",
    "read_vka",
    "write_verifier",
]

SOLCJS_DIR = Path(__file__).parent / "solcjs"
CONTRACT_SIZE_LIMIT = 24_576  # EIP-170: the most bytes of code a contract may deploy


def compile_solidity(
    *sources: Path, via_ir: bool = False, optimize_runs: int = 1, base: Path | None = None
) -> dict[str, Any]:
    """Compile ``sources`` with the pinned solc-js; return ``{contract: {abi, bytecode, ...}}``.

    Imports resolve relative to ``base`` (default: the first source's folder).
    """
    node = shutil.which("node")
    if node is None:
        raise ToolchainError("compiling Solidity needs Node.js (20 or newer) on PATH")
    if not (SOLCJS_DIR / "node_modules" / "solc").is_dir():
        raise ToolchainError(
            f"the pinned solc-js is not installed; run `npm ci --prefix {SOLCJS_DIR}` (scripts/_venv.sh does)"
        )
    command = [node, str(SOLCJS_DIR / "compile.js"), "--optimize-runs", str(optimize_runs)]
    if via_ir:
        command.append("--via-ir")
    if base is not None:
        command += ["--base", str(base)]
    done = subprocess.run([*command, *map(str, sources)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ToolchainError(f"solc-js failed on {[str(s) for s in sources]}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def read_vka(path: Path) -> list[bytes]:
    """EZKL's VKA file: a u64 little-endian count, then that many 32-byte words."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<Q", data)
    if len(data) != 8 + 32 * count:
        raise ProofError(f"{path} is not a VKA file ({len(data)} bytes for {count} words)")
    return [data[8 + 32 * i : 8 + 32 * (i + 1)] for i in range(count)]


def write_verifier(
    keys: ProvingKeys,
    out_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
    reusable: bool = False,
) -> dict[str, Any]:
    """Write ``Verifier.sol`` and ``Verifier.json`` (ABI, bytecode) for a model into ``out_dir``.

    ``reusable=False``: the model's own verifier; a `ProofError` if it would not
    fit the contract size limit. ``reusable=True``: EZKL's reusable verifier,
    plus ``vka.json``, the model's VKA to register in it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sol = out_dir / "Verifier.sol"
    kind = "reusable" if reusable else "own"
    with tempfile.TemporaryDirectory(prefix="aivm-verifier-") as tmp:
        abi_tmp = Path(tmp) / "abi.json"
        sol_tmp = Path(tmp) / "Verifier.sol"
        with step(progress, f"writing the Solidity verifier ({kind})"):
            try:
                call(
                    "create_evm_verifier",
                    str(keys.vk),
                    str(keys.circuit.settings),
                    str(sol_tmp),
                    str(abi_tmp),
                    str(keys.srs_path),
                    reusable,
                )
            except ProofError:
                # EZKL writes the source, then tries to download solc to check it; we compile with solc-js.
                if not sol_tmp.exists():
                    raise
        shutil.copy(sol_tmp, sol)
    with step(progress, "compiling it with solc-js"):
        compiled = compile_solidity(sol)
    name = next(k for k in compiled if k != "compiler")
    artifact = {"contract": name, "compiler": compiled["compiler"], **compiled[name]}
    size = (len(artifact["deployedBytecode"]) - 2) // 2
    if size > CONTRACT_SIZE_LIMIT:
        raise ProofError(
            f"the {kind} verifier of {keys.model_id} is {size} bytes, over the {CONTRACT_SIZE_LIMIT}-byte "
            "contract limit" + ("" if reusable else "; use the reusable verifier (--reusable)")
        )
    (out_dir / "Verifier.json").write_text(json.dumps(artifact, indent=1) + "\n")
    info = {
        "model_id": keys.model_id,
        "kind": kind,
        "contract": name,
        "compiler": compiled["compiler"],
        "sol": str(sol),
        "artifact": str(out_dir / "Verifier.json"),
        "deployed_bytecode_bytes": size,
    }
    if reusable:
        vka = ["0x" + word.hex() for word in read_vka(keys.vka)]
        (out_dir / "vka.json").write_text(
            json.dumps({"model_id": keys.model_id, "vka": vka}, indent=1) + "\n"
        )
        info["vka"] = str(out_dir / "vka.json")
    return info


def evm_calldata(document: dict[str, Any], keys: ProvingKeys, reusable: bool = False) -> bytes:
    """Calldata of ``verifyProof(proof, instances)`` (the model's own verifier) or, with
    ``reusable``, of ``verifyProof(proof, instances, vka)``, for a proof document."""
    with tempfile.TemporaryDirectory(prefix="aivm-calldata-") as tmp:
        proof_path = Path(tmp) / "proof.json"
        proof_path.write_text(json.dumps(document["proof"]))
        vka = [str(keys.vka)] if reusable else []
        call("encode_evm_calldata", str(proof_path), str(Path(tmp) / "calldata.bin"), *vka)
        return (Path(tmp) / "calldata.bin").read_bytes()
