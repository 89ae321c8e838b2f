"""The `aivm` command line (imported by nothing else in the package)."""

from aivm_jax.cli._main import main

__all__ = ["main"]
