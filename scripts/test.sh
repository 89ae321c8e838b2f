#!/usr/bin/env bash
# The whole test suite (slow tests included), then lint. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
python -m pytest "$@"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet  # the docs site (mkdocs.yml): a broken link or stale API name fails
ruff check aivm_jax tests benchmarks scripts
ruff format --check aivm_jax tests benchmarks scripts
