"""The cached call path of `infer`: a call with inputs accepted before skips `_feeds` and runs the
executable compiled for their shapes; outputs, hashes and errors stay exactly those of the full path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import aivm_jax
from aivm_jax import (
    InputDTypeError,
    InputRangeError,
    InputShapeError,
    ModelIdMismatchError,
    TamperedModelError,
)
from aivm_jax.conformance import DATA_DIR
from aivm_jax.runtime import _host, _infer
from aivm_jax.runtime._hashing import ResultHasher, output_hash, row_hash_table
from aivm_jax.runtime._host import encode_scale
from aivm_jax.runtime._sha256 import native_available

ZOO = ("digits-mlp", "digits-cnn")


def _zoo(name: str):
    return aivm_jax.load(DATA_DIR / f"{name}.aivm"), np.load(DATA_DIR / f"{name}.inputs.npy")


def _fresh(program) -> _infer._Compiled:
    """Drop the program's cached entry, so the next call takes the full path."""
    _infer._compiled.pop(program.model_id, None)
    return _infer._compiled_for(program)


def _spec_hashes(program, outs: list[np.ndarray]) -> tuple[list[str], str]:
    """The hashes computed the plain way (hashlib row by row, `output_hash` over the strings)."""
    names = [s.name for s in program.outputs]
    _, rows = row_hash_table(program.model_id, names, outs, native=False)
    return rows, output_hash(program.model_id, rows)


def _no_feeds(monkeypatch):
    """Make `_feeds` fail, to show that a call took the cached path."""

    def refuse(program, inputs):
        raise AssertionError("the cached path should not check the inputs again")

    monkeypatch.setattr(_infer, "_feeds", refuse)


@pytest.mark.parametrize("name", ZOO)
def test_cached_calls_give_the_golden_outputs_and_hashes(name, golden_hashes, monkeypatch):
    program, x = _zoo(name)
    _fresh(program)
    first = aivm_jax.infer(program, x)  # full path: checks, compiles, remembers the signature
    reference = aivm_jax.infer(program, x, mode="reference")
    _no_feeds(monkeypatch)
    again = aivm_jax.infer(program, x)
    for result in (first, again):
        np.testing.assert_array_equal(result.outputs, reference.outputs)
        assert result.outputs.dtype == reference.outputs.dtype
        assert list(result.row_hashes) == golden_hashes[name]["row_hashes"]
        assert result.output_hash == golden_hashes[name]["output_hash"]
        assert result.model_id == golden_hashes[name]["model_id"]
        assert not result.input_quantized and not result.outputs.flags.writeable
    rows, digest = _spec_hashes(program, [reference.outputs])
    assert list(again.row_hashes) == rows and again.output_hash == digest
    assert type(again) is aivm_jax.InferenceResult and list(vars(again)) == list(vars(first))
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.output_hash = "0x"  # type: ignore[misc]


@pytest.mark.parametrize("name", ZOO)
def test_batch_invariance_on_the_cached_path(name):
    program, x = _zoo(name)
    rng = np.random.default_rng(7)
    big = rng.integers(-128, 128, (70, *program.inputs[0].shape)).astype(np.int8)
    big[0], big[1] = -128, 127
    full = aivm_jax.infer(program, big)
    full = aivm_jax.infer(program, big)  # cached; 70 rows: the native hash where it runs
    for size in (1, 2, 31, 32, 33):
        for _ in range(2):  # the second call of each shape is a cached one
            part = aivm_jax.infer(program, big[3 : 3 + size])
            assert part.row_hashes == full.row_hashes[3 : 3 + size], size
            np.testing.assert_array_equal(part.outputs, full.outputs[3 : 3 + size])
            rows, digest = _spec_hashes(program, [part.outputs])
            assert list(part.row_hashes) == rows and part.output_hash == digest


def test_two_programs_alternating_with_the_same_input_shape():
    program, x = _zoo("digits-mlp")
    weight = max(program.params, key=lambda k: program.params[k].size)
    changed = dict(program.params)
    changed[weight] = np.ascontiguousarray(-program.params[weight].clip(-127, 127))
    other = dataclasses.replace(program, params=changed)
    assert other.model_id != program.model_id
    want = {p.model_id: aivm_jax.infer(p, x, mode="reference") for p in (program, other)}
    assert not np.array_equal(*[w.outputs for w in want.values()])  # the check below can fail
    for _ in range(3):
        for p in (program, other, other, program):
            got = aivm_jax.infer(p, x)
            assert got.model_id == p.model_id
            np.testing.assert_array_equal(got.outputs, want[p.model_id].outputs)
            assert got.row_hashes == want[p.model_id].row_hashes


def test_two_zoo_programs_alternating(golden_hashes):
    loaded = {name: _zoo(name) for name in ZOO}
    for _ in range(3):
        for name in (*ZOO, *reversed(ZOO)):
            program, x = loaded[name]
            assert aivm_jax.infer(program, x).output_hash == golden_hashes[name]["output_hash"]


def test_a_program_replaced_on_disk_is_loaded_again(tmp_path):
    program, x = _zoo("digits-mlp")
    weight = max(program.params, key=lambda k: program.params[k].size)
    changed = dict(program.params)
    changed[weight] = np.ascontiguousarray(program.params[weight][::-1])
    other = dataclasses.replace(program, params=changed)
    path = tmp_path / "model.aivm"
    for p in (program, other, program, other):  # same path, same file size, new bytes each time
        aivm_jax.save(p, path)
        for _ in range(2):
            got = aivm_jax.infer(path, x)
            assert got.model_id == p.model_id
            np.testing.assert_array_equal(got.outputs, aivm_jax.infer(p, x, mode="reference").outputs)
    data = bytearray(path.read_bytes())
    data[-100] ^= 1  # a tampered copy of a file loaded before is refused, not served from the cache
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedModelError):
        aivm_jax.infer(path, x)
    aivm_jax.save(other, path)
    assert aivm_jax.infer(path, x, expected_model_id=other.model_id).model_id == other.model_id
    with pytest.raises(ModelIdMismatchError, match="it is not the program you asked for"):
        aivm_jax.infer(path, x, expected_model_id=program.model_id)


def _bounded(program, low: int, high: int):
    spec = dataclasses.replace(program.inputs[0], bounds=(low, high))
    return dataclasses.replace(program, inputs=(spec,))


_BAD = [
    (lambda x: x.astype(np.float32), InputDTypeError),
    (lambda x: x.astype(bool), InputDTypeError),
    (lambda x: x[0], InputShapeError),
    (lambda x: x.reshape(len(x), -1)[:, :-1], InputShapeError),
    (lambda x: x[:0], InputShapeError),
    (lambda x: x.astype(np.int32) + 200, InputRangeError),
    (lambda x: (x.astype(np.int16) + 128).astype(np.uint8), InputRangeError),
    (lambda x: {"wrong": x}, InputShapeError),
    (lambda x: {"x": x, "extra": x}, InputShapeError),
]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("case", range(len(_BAD)))
def test_bad_input_gets_the_same_one_line_error_cold_and_warm(name, case):
    program, x = _zoo(name)
    make, error = _BAD[case]
    messages = []
    for warm in (False, True):
        _fresh(program)
        if warm:  # the good signature (same dtype and shape as most bad cases) is remembered
            aivm_jax.infer(program, x)
            aivm_jax.infer(program, x)
        with pytest.raises(error) as caught:
            aivm_jax.infer(program, make(x))
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "\n" not in messages[0]


def test_declared_bounds_are_checked_on_every_cached_call():
    program, x = _zoo("digits-mlp")
    bounded = _bounded(program, -20, 20)
    inside = np.clip(x, -20, 20).astype(np.int8)
    want = aivm_jax.infer(bounded, inside, mode="reference")
    for _ in range(2):
        assert aivm_jax.infer(bounded, inside).row_hashes == want.row_hashes
    for value in (-21, 21):
        outside = inside.copy()
        outside[len(outside) // 2, 3] = value
        with pytest.raises(InputRangeError, match=r"outside its declared bounds \[-20, 20\]"):
            aivm_jax.infer(bounded, outside)
    assert aivm_jax.infer(bounded, inside).row_hashes == want.row_hashes


def test_inputs_that_are_not_plain_arrays_of_the_spec_dtype_take_the_full_path(tmp_path, monkeypatch):
    program, x = _zoo("digits-cnn")
    want = aivm_jax.infer(program, x)
    np.save(tmp_path / "x.npy", x)
    views = {
        "wider dtype": x.astype(np.int32),
        "big-endian": x.astype(">i2"),
        "not contiguous": np.asfortranarray(x),
        "memmap": np.load(tmp_path / "x.npy", mmap_mode="r"),
        "list": x.tolist(),
        "read-only": np.frombuffer(x.tobytes(), np.int8).reshape(x.shape),
    }
    for label, given in views.items():
        for _ in range(2):
            got = aivm_jax.infer(program, given)
            assert got.row_hashes == want.row_hashes and got.output_hash == want.output_hash, label
    entry = _infer._compiled_for(program)
    # only exact-dtype plain ndarrays are remembered: the int8 ones (contiguous, Fortran, read-only)
    assert {key[0] for key in entry._accepted} == {np.dtype(np.int8)}
    _no_feeds(monkeypatch)
    assert aivm_jax.infer(program, np.asfortranarray(x)).row_hashes == want.row_hashes
    with pytest.raises(AssertionError, match="should not check"):
        aivm_jax.infer(program, x.astype(np.int32))  # never cached: a conversion was needed


def _scaled(program, real_scale: float = 1 / 16):
    """``program`` with a stored input scale, so that `infer` quantizes float rows for it."""
    scales = {spec.name: encode_scale(real_scale) for spec in program.inputs}
    return program.with_metadata(scales=scales)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_rows_take_the_cached_path_bit_for_bit(dtype, monkeypatch):
    program = _scaled(_zoo("digits-mlp")[0])
    _fresh(program)
    rng = np.random.default_rng(3)
    rows = rng.normal(0, 3, (9, 64)).astype(dtype)
    rows[0, :4] = [np.inf, -np.inf, 1e30, -0.03125]  # saturation and an exact tie (half a step)
    ints = _host._quantize_numpy(rows, **_me(program), out=np.dtype(np.int8))
    want = aivm_jax.infer(program, ints, mode="reference")
    first = aivm_jax.infer(program, rows)  # full path: quantizes, checks, remembers the signature
    _no_feeds(monkeypatch)
    for _ in range(2):
        again = aivm_jax.infer(program, rows)
        assert again.input_quantized and first.input_quantized
        np.testing.assert_array_equal(again.outputs, want.outputs)
        assert again.row_hashes == first.row_hashes == want.row_hashes
        assert again.output_hash == want.output_hash
    with pytest.raises(AssertionError, match="should not check"):
        aivm_jax.infer(program, np.clip(rows, -99, 99).astype(np.float16))  # not remembered: another dtype
    with pytest.raises(AssertionError, match="should not check"):
        aivm_jax.infer(program, ints)  # not remembered: another dtype


def _me(program) -> dict[str, int]:
    scale = program.metadata["scales"][program.inputs[0].name]
    return {"m": scale["mantissa"], "e": scale["exponent"]}


def test_float_rows_with_nan_get_the_same_error_cold_and_warm():
    program = _scaled(_zoo("digits-mlp")[0])
    rows = np.full((3, 64), 0.25, np.float32)
    bad = rows.copy()
    bad[1, 7] = np.nan
    messages = []
    for warm in (False, True):
        _fresh(program)
        if warm:
            aivm_jax.infer(program, rows)
        with pytest.raises(InputRangeError) as caught:
            aivm_jax.infer(program, bad)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "NaN" in messages[0]


def test_float_rows_are_checked_against_declared_bounds_on_cached_calls():
    program = _scaled(_bounded(_zoo("digits-mlp")[0], -20, 20), 1 / 4)
    inside = np.full((4, 64), 5.0, np.float32)  # 20 steps of 1/4
    want = aivm_jax.infer(program, np.full((4, 64), 20, np.int8), mode="reference")
    for _ in range(2):
        assert aivm_jax.infer(program, inside).row_hashes == want.row_hashes
    outside = inside.copy()
    outside[2, 9] = 5.125  # quantizes to 21 (a tie rounds up)
    with pytest.raises(
        InputRangeError, match=r"holds values in \[20, 21\], outside its declared bounds \[-20, 20\]"
    ):
        aivm_jax.infer(program, outside)


def test_an_input_changed_in_place_gives_new_outputs():
    program, x = _zoo("digits-mlp")
    x = x.copy()
    before = aivm_jax.infer(program, x)
    x[0] = -x[0].clip(-127, 127)
    after = aivm_jax.infer(program, x)
    np.testing.assert_array_equal(after.outputs, aivm_jax.infer(program, x, mode="reference").outputs)
    assert after.row_hashes[0] != before.row_hashes[0] and after.row_hashes[1:] == before.row_hashes[1:]


def test_large_parameters_are_placed_on_the_device_once(monkeypatch):
    program, x = _zoo("digits-cnn")
    embedded = aivm_jax.infer(program, x)
    monkeypatch.setattr(_infer, "EMBEDDED_PARAMS_MAX_BYTES", 0)  # parameters as arguments
    entry = _fresh(program)
    assert entry._embedded is None
    for batch in (len(x), 3, len(x), 3):
        got = aivm_jax.infer(program, x[:batch])
        assert got.row_hashes == embedded.row_hashes[:batch]
    assert list(entry._placed) == [(None,)]  # one placement, reused by every executable
    assert entry.local_cache_size() == 2  # one executable per input shape
    _fresh(program)


def test_the_result_hasher_matches_the_definition_for_any_layout():
    rng = np.random.default_rng(3)
    model_id = "0x" + bytes(range(32)).hex()
    for count in (0, 1, 2, 5, 7, 8, 9, 31, 32, 40):
        a = rng.integers(-(2**31), 2**31, (count, 3, 5), dtype=np.int64).astype(np.int32)
        b = rng.integers(-128, 128, (count, 7), dtype=np.int8)
        for outputs in ([a], [b], [a, b], [a[:, :, ::2], b], [a.astype(">i4"), b], [np.asfortranarray(a)]):
            names = ["logits", "y"][: len(outputs)]
            _, rows = row_hash_table(model_id, names, outputs, native=False)
            hasher = ResultHasher(model_id, names, outputs)
            hashes, digest = hasher(outputs)
            assert list(hashes) == rows, (count, [o.dtype for o in outputs])
            assert digest == output_hash(model_id, rows)
            if native_available() and count:  # the native call, whatever the batch size
                assert hasher._native_hashes(outputs, count) == (hashes, digest)
