"""Shared fixtures: strict dtype promotion, hypothesis profile, the zoo programs."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import aivm_jax  # noqa: F401  (sets the determinism flags before JAX starts)
from aivm_jax.conformance import DATA_DIR

jax.config.update("jax_numpy_dtype_promotion", "strict")

settings.register_profile(
    "aivm", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("aivm")

GOLDEN = Path(__file__).parent / "golden"
ZOO_NAMES = ("digits-mlp", "digits-cnn")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.fixture(scope="session")
def trained_where_shipped() -> bool:
    """Whether this CPU is of the family that trained the shipped zoo programs (AVX-512).

    Float training is off the inference path and bit-reproducible only on one software
    stack and CPU family: XLA's float code differs between AVX-512 and AVX2 machines (seen:
    digits-mlp's weights differ in the last bits on an AVX2 EPYC). Tests that rebuild a zoo
    model compare model ids only here.
    """
    return {"avx512f", "avx512_vnni"} <= _cpu_flags()


@pytest.fixture(scope="session")
def golden_hashes() -> dict:
    return json.loads((GOLDEN / "zoo_hashes.json").read_text())


@pytest.fixture(scope="session", params=ZOO_NAMES)
def zoo_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def shipped_program(zoo_name):
    """The committed zoo program (the conformance copy), loaded and verified."""
    return aivm_jax.load(DATA_DIR / f"{zoo_name}.aivm")


@pytest.fixture(scope="session")
def fixed_inputs(zoo_name) -> np.ndarray:
    return np.load(DATA_DIR / f"{zoo_name}.inputs.npy")


@pytest.fixture(scope="session")
def digits_test_inputs(shipped_program) -> np.ndarray:
    from aivm_jax.models import load_digits_data

    data = load_digits_data()
    return data.x_test.reshape((-1, *shipped_program.inputs[0].shape))


@pytest.fixture(scope="session")
def built_zoo():
    """``get(name)``: the zoo program ``name`` built by `aivm_jax.models.build`, once per session
    (minilm-l6 and char-gpt take a minute or more each; several test modules read them)."""
    from aivm_jax.models import build

    programs = {}

    def get(name: str):
        if name not in programs:
            programs[name] = build(name)
        return programs[name]

    return get
