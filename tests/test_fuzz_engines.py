"""The differential fuzz, short: random valid programs give the same bits on every engine, and
each row the same bits alone as in its batch (``scripts/fuzz_engines.py`` runs it longer)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aivm_jax.ops import OPSET
from aivm_jax.ops._vnni import register_kernel
from aivm_jax.runtime import infer
from aivm_jax.runtime._fusion import FusedAttention, FusedDense, Requantized, fuse_chains
from aivm_jax.runtime._fuzz import compare_engines, random_case, run_engines

SCRIPT = Path(__file__).parent.parent / "scripts" / "fuzz_engines.py"
SEED = 20261219
CASES = 20


@pytest.mark.parametrize("seed", range(SEED, SEED + CASES))
def test_random_valid_programs_agree_on_every_engine_and_row_by_row(seed):
    case = random_case(seed)
    results = run_engines(case)
    assert set(results) == {"reference", "jit", "eager", "jit-rows"}
    assert compare_engines(results) == [], case.program.op_counts()


def test_the_generator_reaches_every_op_and_every_fused_chain():
    ops, steps = collections.Counter(), collections.Counter()
    for seed in range(SEED, SEED + 150):
        program = random_case(seed).program
        ops.update(program.op_counts())
        for step in fuse_chains(program):
            steps[type(step.inner if isinstance(step, Requantized) else step).__name__] += 1
            steps[type(step).__name__] += 1
    assert set(ops) == set(OPSET)
    for fused in (FusedDense, FusedAttention, Requantized):
        assert steps[fused.__name__] > 0


def test_cases_are_drawn_from_the_seed_alone():
    a, b = random_case(SEED + 3), random_case(SEED + 3)
    assert a.program.model_id == b.program.model_id
    assert all(np.array_equal(a.feeds[k], b.feeds[k]) for k in a.feeds)


def test_a_difference_is_reported():
    results = run_engines(random_case(SEED), rows_alone=False)
    broken = {k: [o.copy() for o in v] for k, v in results.items()}
    broken["jit"][0].reshape(-1)[0] ^= 1
    assert len(compare_engines(broken)) == 1


@pytest.mark.skipif(
    not register_kernel(), reason="the CPU kernels are off here: jit already is the XLA engine"
)
def test_kernels_on_and_off_agree():
    # AIVM_INT8_GEMM=xla is read once per process: the XLA engine runs in a second one.
    cases = 4
    env = {**os.environ, "AIVM_INT8_GEMM": "xla"}
    command = [sys.executable, str(SCRIPT), "--hashes", "--cases", str(cases), "--seed", str(SEED)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    xla = json.loads(done.stdout.strip().splitlines()[-1])
    for seed in range(SEED, SEED + cases):
        case = random_case(seed)
        assert list(infer(case.program, dict(case.feeds)).row_hashes) == xla[str(seed)], seed
