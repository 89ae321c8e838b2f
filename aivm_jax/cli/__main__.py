"""``python -m aivm_jax.cli``: the same as the ``aivm`` command."""

from aivm_jax.cli import main

main()
