"""`infer`: results, hashes, input validation, and no float on the inference path."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import aivm_jax
from aivm_jax import InputDTypeError, InputRangeError, InputShapeError, ModelIdMismatchError
from aivm_jax.runtime import output_hash, quantize_input, row_hashes
from aivm_jax.runtime._infer import _compiled_for


def test_result_fields(shipped_program, fixed_inputs):
    result = aivm_jax.infer(shipped_program, fixed_inputs)
    assert result.model_id == shipped_program.model_id
    assert result.outputs.dtype == np.int8 and result.outputs.shape == (len(fixed_inputs), 10)
    assert len(result.row_hashes) == len(fixed_inputs)
    assert all(re.fullmatch(r"0x[0-9a-f]{64}", h) for h in (*result.row_hashes, result.output_hash))
    assert result.output_hash == output_hash(result.model_id, result.row_hashes)
    np.testing.assert_array_equal(result.named_outputs["y"], result.outputs)


def test_accepts_a_path_and_checks_the_expected_id(shipped_program, fixed_inputs, tmp_path):
    path = tmp_path / "m.aivm"
    aivm_jax.save(shipped_program, path)
    from_path = aivm_jax.infer(str(path), fixed_inputs, expected_model_id=shipped_program.model_id)
    assert from_path.output_hash == aivm_jax.infer(shipped_program, fixed_inputs).output_hash
    with pytest.raises(ModelIdMismatchError):
        aivm_jax.infer(path, fixed_inputs, expected_model_id="0x" + "ab" * 32)
    with pytest.raises(ModelIdMismatchError):
        aivm_jax.infer(shipped_program, fixed_inputs, expected_model_id="0x" + "ab" * 32)


def test_row_hash_depends_on_model_and_output():
    out = np.array([[1, 2], [1, 2], [1, 3]], np.int8)
    a = row_hashes("0x" + "11" * 32, ["y"], [out])
    b = row_hashes("0x" + "22" * 32, ["y"], [out])
    assert a[0] == a[1] != a[2]
    assert a[0] != b[0]
    assert row_hashes("0x" + "11" * 32, ["y"], [out.astype(np.int32)])[0] != a[0]


def test_wider_integer_dtypes_are_accepted_when_values_fit(shipped_program, fixed_inputs):
    narrow = aivm_jax.infer(shipped_program, fixed_inputs)
    wide = aivm_jax.infer(shipped_program, fixed_inputs.astype(np.int64))
    listed = aivm_jax.infer(shipped_program, fixed_inputs.tolist())
    assert narrow.output_hash == wide.output_hash == listed.output_hash


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda x: x.astype(np.float32), InputDTypeError, "quantize_input"),
        (lambda x: x.astype(bool), InputDTypeError, "integers"),
        (lambda x: x[0], InputShapeError, "batch axis"),
        (lambda x: x.reshape(len(x), -1)[:, :-1], InputShapeError, "must have shape"),
        (lambda x: x[:0], InputShapeError, "empty batch"),
        (lambda x: x.astype(np.int32) + 200, InputRangeError, r"\[-128, 127\]"),
        (lambda x: x.astype(np.int32) - 300, InputRangeError, "outside int8"),
        (lambda x: (x.astype(np.int16) + 128).astype(np.uint8), InputRangeError, r"\[-128, 127\]"),
        (lambda x: {"wrong": x}, InputShapeError, "program inputs"),
    ],
)
def test_bad_inputs_get_typed_errors(shipped_program, fixed_inputs, make, error, message):
    with pytest.raises(error, match=message):
        aivm_jax.infer(shipped_program, make(fixed_inputs))


def test_any_integer_dtype_holding_in_range_values_is_accepted(shipped_program, fixed_inputs):
    # the values are read only where the array's dtype could exceed the input's range
    want = aivm_jax.infer(shipped_program, fixed_inputs).row_hashes
    for dtype in (np.int8, np.int16, np.int64):
        assert aivm_jax.infer(shipped_program, fixed_inputs.astype(dtype)).row_hashes == want
    edges = fixed_inputs.astype(np.int8)
    edges.reshape(len(edges), -1)[:, :2] = [-128, 127]  # the whole int8 range is allowed
    before = edges.copy()
    for mode in ("jit", "eager", "reference"):  # an input already in its dtype is not copied
        assert len(aivm_jax.infer(shipped_program, edges, mode=mode).row_hashes) == len(edges)
        np.testing.assert_array_equal(edges, before)  # ... and not written to either


def test_typed_errors_are_also_builtins():
    assert issubclass(InputDTypeError, TypeError) and issubclass(InputDTypeError, aivm_jax.AivmError)
    assert issubclass(InputRangeError, ValueError) and issubclass(InputShapeError, ValueError)


def test_no_float_on_the_inference_path(shipped_program, fixed_inputs):
    entry = _compiled_for(shipped_program)
    feeds = {"x": fixed_inputs}
    compiled = [entry.fn.lower(entry.params_on(None), feeds)]
    if entry._embedded is not None:  # what `infer` runs for small programs: parameters as constants
        compiled.append(entry._embedded.lower(feeds))
    for lowered in compiled:
        hlo = lowered.compile().as_text()
        assert "s8" in hlo and "s32" in hlo  # the check below would be vacuous otherwise
        floats = re.findall(r"\b(?:bf16|f16|f32|f64|f8\w*)\[", hlo)
        assert not floats, f"float types in the compiled program: {sorted(set(floats))}"


def test_compiles_once_per_input_shape(shipped_program, fixed_inputs):
    from aivm_jax.runtime._infer import _compiled

    _compiled.pop(shipped_program.model_id, None)  # start from an empty cache for this program
    entry = _compiled_for(shipped_program)
    aivm_jax.infer(shipped_program, fixed_inputs)
    before = entry.local_cache_size()
    for _ in range(3):
        aivm_jax.infer(shipped_program, fixed_inputs)
    assert entry.local_cache_size() == before
    aivm_jax.infer(shipped_program, fixed_inputs[:3])
    assert entry.local_cache_size() == before + 1


def test_x64_setting_of_the_user_does_not_matter(shipped_program, fixed_inputs):
    default = aivm_jax.infer(shipped_program, fixed_inputs, mode="eager")
    with jax.enable_x64(True):
        wide = aivm_jax.infer(shipped_program, fixed_inputs, mode="eager")
    assert wide.output_hash == default.output_hash


def test_quantize_input_rounds_half_up_and_saturates():
    out = quantize_input(np.array([-2.5, -1.5, 0.49, 2.5, 1e9, -1e9]), 1.0)
    np.testing.assert_array_equal(out, [-2, -1, 0, 3, 127, -128])
    assert out.dtype == np.int8


def test_determinism_flags_are_in_force():
    report = aivm_jax.determinism_report()
    assert report["determinism_flags_set"], report["xla_flags"]
    assert report["cpu_kernels"].split(":")[0].split(" ")[0] in ("avx512-vnni", "unavailable", "off")


def test_cpu_computations_run_on_the_calling_thread(monkeypatch):
    """``import aivm_jax`` turns JAX's CPU async dispatch off (a speed setting) unless the user set it."""
    import os
    import subprocess
    import sys

    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:
        assert aivm_jax.determinism_report()["cpu_async_dispatch"] is False
    code = "import aivm_jax, jax; print(jax.config.read('jax_cpu_enable_async_dispatch'))"
    monkeypatch.setenv("JAX_CPU_ENABLE_ASYNC_DISPATCH", "1")  # the user's own choice is kept
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


_SHARDED_CHILD = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import aivm_jax
from aivm_jax.conformance import DATA_DIR
from aivm_jax.runtime import _infer

program = aivm_jax.load(DATA_DIR / "digits-cnn.aivm")
x = np.random.default_rng(0).integers(-128, 128, (64, *program.inputs[0].shape)).astype(np.int8)
local = aivm_jax.infer(program, x)
out = {"devices": jax.local_device_count()}
for embedded in (True, False):
    _infer.EMBEDDED_PARAMS_MAX_BYTES = 1 << 20 if embedded else 0  # parameters compiled in, or passed
    _infer._compiled.clear()
    sharded = aivm_jax.infer(program, x, devices="all")
    entry = _infer._compiled_for(program)
    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    feeds = {program.inputs[0].name: jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))}
    ((fn, leading),) = entry._sharded.values()
    hlo = fn.lower(*leading, feeds).compile().as_text()
    out[str(embedded)] = {
        "same": list(sharded.row_hashes) == list(local.row_hashes),
        "gathers": hlo.count("all-gather"),
        "shard_rows": f"s8[{len(x) // 4},8,8,1]" in hlo,  # the input block of one device
        "all_rows": f"s8[{len(x)},8,8,1]" in hlo,  # the whole batch, gathered
    }
print(json.dumps(out))
"""


def test_sharded_runs_give_each_device_its_own_rows(tmp_path):
    """``devices=`` runs the program per device on its block of rows (shard_map): same hashes as one
    device, and no device gathers the whole batch (the CPU kernels' custom calls cannot be split
    by XLA, which under a plain sharded jit gathered every row onto every device)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for embedded in ("True", "False"):
        assert out[embedded] == {"same": True, "gathers": 0, "shard_rows": True, "all_rows": False}, (
            embedded,
            out,
        )
