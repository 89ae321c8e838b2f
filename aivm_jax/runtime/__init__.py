"""The AIVM runtime: `infer`, result hashing and the XLA determinism settings."""

from aivm_jax.runtime._determinism import (
    XLA_DETERMINISM_FLAGS,
    apply_determinism_flags,
    determinism_report,
)
from aivm_jax.runtime._hashing import input_hash, output_hash, row_hashes, row_header
from aivm_jax.runtime._host import quantize_input, read_input_file, read_named_inputs
from aivm_jax.runtime._infer import InferenceResult, infer

__all__ = [
    "XLA_DETERMINISM_FLAGS",
    "InferenceResult",
    "apply_determinism_flags",
    "determinism_report",
    "infer",
    "input_hash",
    "output_hash",
    "quantize_input",
    "read_input_file",
    "read_named_inputs",
    "row_header",
    "row_hashes",
]
