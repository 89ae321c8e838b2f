#!/usr/bin/env bash
# The whole test suite (slow tests included), then lint. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
python -m pytest "$@"
ruff check aivm_jax tests benchmarks scripts
ruff format --check aivm_jax tests benchmarks scripts
