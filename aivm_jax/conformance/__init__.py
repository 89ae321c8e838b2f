"""Conformance: golden vectors of every op and zoo model, and the check a node runs before joining."""

from aivm_jax.conformance._check import run_conformance
from aivm_jax.conformance._vectors import DATA_DIR, load_op_cases, op_cases, write_vectors

__all__ = ["DATA_DIR", "load_op_cases", "op_cases", "run_conformance", "write_vectors"]
