"""Dispute commitments: Merkle roots over a program's steps and tensors and over a request's trace.

The off-chain half of the dispute game (issue 20): a **model commitment** binds every step
descriptor and every slice of every parameter of a program; a **trace** binds every step's
output for one request input; both are Merkle trees in OpenZeppelin's conventions, so a
contract proves one step or one slice with ``MerkleProof.verify`` and O(log n) calldata.
Byte layouts: ``docs/spec/commitments.md``. Checking a proof needs only Keccak (`verify`).
"""

from aivm_jax.disputes._fault import faulty_values
from aivm_jax.disputes._input import InputCommitment, input_commitment
from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._leaves import (
    DTYPE_CODES,
    SLICE_BYTES,
    TAGS,
    encode_leaf,
    leaf,
    rows_per_slice,
    slice_count,
    tag,
    tensor_slices,
)
from aivm_jax.disputes._merkle import hash_leaf, hash_pair, merkle_proof, merkle_root, process_proof, verify
from aivm_jax.disputes._model import (
    OPERAND_PARAM,
    OPERAND_VALUE,
    STEP_DESCRIPTOR_ABI,
    ModelCommitment,
    attrs_words,
    decode_step_descriptor,
    model_commitment,
    step_descriptor,
)
from aivm_jax.disputes._opening import Opening
from aivm_jax.disputes._provider import GameState, Outcome, Phase, TraceProvider, divergence, proof_to_level
from aivm_jax.disputes._rows import pack_row, read_row, read_rows, step_struct
from aivm_jax.disputes._trace import RowTrace, Trace, commit_values, step_leaf_payload, step_values, trace

__all__ = [
    "GameState",
    "InputCommitment",
    "Outcome",
    "Phase",
    "TraceProvider",
    "divergence",
    "faulty_values",
    "input_commitment",
    "proof_to_level",
    "DTYPE_CODES",
    "OPERAND_PARAM",
    "OPERAND_VALUE",
    "STEP_DESCRIPTOR_ABI",
    "ModelCommitment",
    "Opening",
    "RowTrace",
    "Trace",
    "attrs_words",
    "commit_values",
    "decode_step_descriptor",
    "model_commitment",
    "step_descriptor",
    "step_struct",
    "step_leaf_payload",
    "step_values",
    "trace",
    "SLICE_BYTES",
    "TAGS",
    "encode_leaf",
    "hash_leaf",
    "hash_pair",
    "keccak256",
    "leaf",
    "merkle_proof",
    "merkle_root",
    "process_proof",
    "pack_row",
    "read_row",
    "read_rows",
    "rows_per_slice",
    "slice_count",
    "tag",
    "tensor_slices",
    "verify",
]
