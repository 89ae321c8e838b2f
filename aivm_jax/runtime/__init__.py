"""The AIVM runtime: `infer`, result hashing, the XLA determinism settings, and what a request
costs (`resource_estimate`, `check_resources`)."""

from aivm_jax.runtime._determinism import (
    XLA_DETERMINISM_FLAGS,
    apply_determinism_flags,
    determinism_report,
)
from aivm_jax.runtime._hashing import input_hash, output_hash, row_hashes, row_header
from aivm_jax.runtime._host import quantize_input, read_input_file, read_named_inputs
from aivm_jax.runtime._infer import InferenceResult, infer
from aivm_jax.runtime._resources import ResourceLimitError, check_resources, resource_estimate

__all__ = [
    "XLA_DETERMINISM_FLAGS",
    "InferenceResult",
    "ResourceLimitError",
    "apply_determinism_flags",
    "check_resources",
    "determinism_report",
    "infer",
    "input_hash",
    "output_hash",
    "quantize_input",
    "read_input_file",
    "read_named_inputs",
    "resource_estimate",
    "row_header",
    "row_hashes",
]
