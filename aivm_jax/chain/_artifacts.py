"""Compiled contracts, committed inside the package so that using them needs no Node.js.

``scripts/build_contracts.py`` recompiles ``contracts/*.sol`` with the pinned
solc-js and rewrites ``aivm_jax/chain/artifacts/*.json``; a test recompiles and
checks the committed artifacts match the sources byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACT_DIR", "CONTRACT_NAMES", "artifact", "build_artifacts", "error_selectors"]

ARTIFACT_DIR = Path(__file__).parent / "artifacts"
CONTRACT_NAMES = (
    "ModelRegistry",
    "InferenceMarket",
    "ReentrantNode",
    "AcceptAllVerifier",
    "RejectAllVerifier",
    "ReentrantVerifier",
    "MerkleCheck",
    "OneStepLinear",
    "OneStepElementwise",
    "OneStepRows",
    "DisputeGame",
)
_SOURCES = (
    "ModelRegistry.sol",
    "InferenceMarket.sol",
    "test/ReentrantNode.sol",
    "test/TestVerifiers.sol",
    "test/MerkleCheck.sol",
    "disputes/OneStepLinear.sol",
    "disputes/OneStepElementwise.sol",
    "disputes/OneStepRows.sol",
    "disputes/DisputeGame.sol",
)
OPTIMIZE_RUNS = 200


@functools.cache
def artifact(name: str) -> dict[str, Any]:
    """``{"abi", "bytecode", "compiler", "source", "source_sha256"}`` of a compiled contract."""
    return json.loads((ARTIFACT_DIR / f"{name}.json").read_text())


def build_artifacts(contracts_dir: Path) -> dict[str, dict[str, Any]]:
    """Compile the contract sources with the pinned solc-js (needs Node.js)."""
    from aivm_jax.proofs._evm import compile_solidity

    compiled = compile_solidity(
        *(contracts_dir / s for s in _SOURCES), via_ir=True, optimize_runs=OPTIMIZE_RUNS, base=contracts_dir
    )
    out = {}
    for name in CONTRACT_NAMES:
        entry = compiled[name]
        source = (contracts_dir / entry["source"]).read_bytes()
        out[name] = {
            "contract": name,
            "compiler": compiled["compiler"],
            "source": entry["source"],
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "abi": entry["abi"],
            "bytecode": entry["bytecode"],
        }
    return out


@functools.cache
def error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector -> (error name, argument types), over every contract's custom errors."""
    from eth_utils import keccak

    selectors = {}
    for name in CONTRACT_NAMES:
        for item in artifact(name)["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                signature = f"{item['name']}({','.join(types)})"
                selectors[keccak(text=signature)[:4]] = (item["name"], types)
    return selectors
