"""Zero-knowledge proofs (EZKL) of the exact output an AIVM program computes.

`setup` builds a program's circuit and keys once per model id; `prove` proves
one inference row, after checking that the circuit's witness equals
`aivm_jax.infer` bit for bit; `verify` checks a proof file offline;
`write_verifier` produces the model's own Solidity verifier, or EZKL's reusable one
and the model's VKA.
"""

from aivm_jax.proofs._bounds import program_bounds
from aivm_jax.proofs._circuit import build_circuit, circuit_run_args
from aivm_jax.proofs._evm import CONTRACT_SIZE_LIMIT, compile_solidity, evm_calldata, read_vka, write_verifier
from aivm_jax.proofs._export import export_onnx
from aivm_jax.proofs._keys import DEV_SRS_WARNING, ProvingKeys, default_cache_dir, load_keys, setup
from aivm_jax.proofs._prove import VerifiedProof, field_element, prove, read_proof, verify, write_proof

__all__ = [
    "CONTRACT_SIZE_LIMIT",
    "DEV_SRS_WARNING",
    "ProvingKeys",
    "VerifiedProof",
    "build_circuit",
    "circuit_run_args",
    "compile_solidity",
    "default_cache_dir",
    "evm_calldata",
    "export_onnx",
    "field_element",
    "load_keys",
    "program_bounds",
    "prove",
    "read_proof",
    "read_vka",
    "setup",
    "verify",
    "write_proof",
    "write_verifier",
]
