"""Batch jobs: resumable, sharded over devices and hosts, committed to by a Merkle root."""

from aivm_jax.batch._job import BatchResult, init_distributed, read_batch_inputs, run_batch
from aivm_jax.batch._merkle import merkle_proof, merkle_root, verify_merkle_proof

__all__ = [
    "BatchResult",
    "init_distributed",
    "merkle_proof",
    "merkle_root",
    "read_batch_inputs",
    "run_batch",
    "verify_merkle_proof",
]
