"""The determinism battery, over every zoo model.

jit == eager == NumPy reference; batch sizes 1, 7, 64, 257 give the same row
hashes; 8 sharded devices == 1 device; two processes agree; golden hashes hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aivm_jax
from aivm_jax.conformance import DATA_DIR


def _batch(digits_test_inputs, n):
    reps = -(-n // len(digits_test_inputs))
    return np.concatenate([digits_test_inputs] * reps)[:n]


def test_jit_eager_and_reference_agree_bit_for_bit(shipped_program, digits_test_inputs):
    results = {
        mode: aivm_jax.infer(shipped_program, digits_test_inputs, mode=mode)
        for mode in ("jit", "eager", "reference")
    }
    np.testing.assert_array_equal(results["jit"].outputs, results["reference"].outputs)
    np.testing.assert_array_equal(results["eager"].outputs, results["reference"].outputs)
    assert len({r.output_hash for r in results.values()}) == 1


def test_extreme_inputs_agree_too(shipped_program):
    # whole int8 range, not just the 0..16 pixels the model was trained on: saturation everywhere
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, size=(33, *shipped_program.inputs[0].shape)).astype(np.int8)
    x[0], x[1] = -128, 127
    jit = aivm_jax.infer(shipped_program, x)
    ref = aivm_jax.infer(shipped_program, x, mode="reference")
    np.testing.assert_array_equal(jit.outputs, ref.outputs)


def test_row_hashes_do_not_depend_on_batch_size(shipped_program, digits_test_inputs):
    x = _batch(digits_test_inputs, 257)
    full = aivm_jax.infer(shipped_program, x).row_hashes
    for size in (1, 7, 64):
        for start in range(0, 257, size * 9 + 1):
            part = aivm_jax.infer(shipped_program, x[start : start + size]).row_hashes
            assert part == full[start : start + len(part)], (size, start)
    alone = [aivm_jax.infer(shipped_program, x[i : i + 1]).row_hashes[0] for i in (0, 100, 256)]
    assert alone == [full[0], full[100], full[256]]


def test_golden_hashes(shipped_program, fixed_inputs, golden_hashes, zoo_name):
    golden = golden_hashes[zoo_name]
    assert shipped_program.model_id == golden["model_id"]
    result = aivm_jax.infer(shipped_program, fixed_inputs)
    assert list(result.row_hashes) == golden["row_hashes"]
    assert result.output_hash == golden["output_hash"]


_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import aivm_jax, jax
    from aivm_jax.conformance import DATA_DIR
    out = {"devices": jax.local_device_count()}
    for name in ("digits-mlp", "digits-cnn"):
        program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
        x = np.load(sys.argv[1] + f"/{name}.npy")
        one = aivm_jax.infer(program, x)
        sharded = aivm_jax.infer(program, x, devices="all")
        out[name] = {"one": list(one.row_hashes), "sharded": list(sharded.row_hashes)}
    print(json.dumps(out))
    """
)


def _run_child(tmp_path, devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory):
    from aivm_jax.models import load_digits_data

    path = tmp_path_factory.mktemp("inputs")
    data = load_digits_data()
    for name in ("digits-mlp", "digits-cnn"):
        program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
        x = data.x_test[:203].reshape((-1, *program.inputs[0].shape))  # 203: not a multiple of 8
        np.save(path / f"{name}.npy", x)
    return path


@pytest.mark.slow
def test_eight_devices_and_two_processes_agree(shared_inputs):
    eight = _run_child(shared_inputs, 8)
    one = _run_child(shared_inputs, 1)
    assert eight["devices"] == 8 and one["devices"] == 1
    for name in ("digits-mlp", "digits-cnn"):
        assert eight[name]["sharded"] == eight[name]["one"] == one[name]["one"] == one[name]["sharded"]
        program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
        here = aivm_jax.infer(program, np.load(shared_inputs / f"{name}.npy")).row_hashes
        assert list(here) == one[name]["one"]  # this process, a third one, agrees too
