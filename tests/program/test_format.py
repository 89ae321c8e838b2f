"""The .aivm file: canonical bytes, model id, and refusal of any changed file."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

import aivm_jax
from aivm_jax import (
    ModelFileError,
    ModelFileNotFoundError,
    ModelIdMismatchError,
    TamperedModelError,
)
from aivm_jax.program import from_bytes, to_bytes


def test_round_trip_keeps_everything(shipped_program, tmp_path):
    path = tmp_path / "m.aivm"
    model_id = aivm_jax.save(shipped_program, path)
    loaded = aivm_jax.load(path)
    assert loaded.model_id == model_id == shipped_program.model_id
    assert to_bytes(loaded) == path.read_bytes()
    assert loaded.nodes == shipped_program.nodes
    assert loaded.metadata == shipped_program.metadata
    for name, array in shipped_program.params.items():
        assert loaded.params[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.params[name], array)


def test_model_id_is_sha256_of_the_bytes_before_the_checksum(shipped_program):
    data = to_bytes(shipped_program)
    assert shipped_program.model_id == "0x" + hashlib.sha256(data[:-32]).hexdigest()
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_saving_twice_gives_identical_bytes(shipped_program, tmp_path):
    aivm_jax.save(shipped_program, tmp_path / "a.aivm")
    aivm_jax.save(aivm_jax.load(tmp_path / "a.aivm"), tmp_path / "b.aivm")
    assert (tmp_path / "a.aivm").read_bytes() == (tmp_path / "b.aivm").read_bytes()


def test_any_change_changes_the_model_id(shipped_program):
    name = sorted(shipped_program.params)[0]
    params = dict(shipped_program.params)
    changed = params[name].copy()
    changed.reshape(-1)[0] ^= 1
    params[name] = changed
    other = aivm_jax.Program(
        name=shipped_program.name,
        inputs=shipped_program.inputs,
        outputs=shipped_program.outputs,
        nodes=shipped_program.nodes,
        params=params,
        metadata=shipped_program.metadata,
    )
    assert other.model_id != shipped_program.model_id


def test_every_flipped_byte_is_refused(shipped_program):
    data = bytearray(to_bytes(shipped_program))
    # every byte of the header and manifest start, and a sample through tensors and checksum
    positions = list(range(0, 200)) + list(range(200, len(data), max(1, len(data) // 300)))
    positions.append(len(data) - 1)
    for position in positions:
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(ModelFileError):
            from_bytes(bytes(tampered))


def test_tampered_file_with_fixed_checksum_is_still_refused(shipped_program):
    data = to_bytes(shipped_program)
    body = data[:-32]
    magic, version, length = struct.unpack_from("<8sIQ", body)
    manifest = json.loads(body[20 : 20 + length])
    text = json.dumps(manifest, indent=1).encode()  # same program, non-canonical bytes
    forged = struct.pack("<8sIQ", magic, version, len(text)) + text + body[20 + length :]
    with pytest.raises(TamperedModelError, match="canonical"):
        from_bytes(forged + hashlib.sha256(forged).digest())


def test_forged_weights_with_fixed_checksum_have_another_id(shipped_program):
    data = bytearray(to_bytes(shipped_program)[:-32])
    (length,) = struct.unpack_from("<Q", data, 12)
    data[20 + length] ^= 0x01  # low byte of the first bias
    forged = bytes(data) + hashlib.sha256(bytes(data)).digest()
    assert from_bytes(forged).model_id != shipped_program.model_id
    with pytest.raises(ModelIdMismatchError):
        from_bytes(forged, expected_model_id=shipped_program.model_id)


def test_truncated_and_foreign_files_are_refused(shipped_program, tmp_path):
    data = to_bytes(shipped_program)
    for bad in (data[:10], data[:-1], b"", b"PK\x03\x04" + data[4:]):
        with pytest.raises(ModelFileError):
            from_bytes(bad)


def test_missing_file_is_a_typed_file_not_found(tmp_path):
    with pytest.raises(ModelFileNotFoundError) as info:
        aivm_jax.load(tmp_path / "missing.aivm")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelFileError):
        aivm_jax.load(tmp_path)


def test_expected_model_id(shipped_program, tmp_path):
    path = tmp_path / "m.aivm"
    aivm_jax.save(shipped_program, path)
    assert aivm_jax.load(path, expected_model_id=shipped_program.model_id.upper().replace("0X", "0x"))
    with pytest.raises(ModelIdMismatchError):
        aivm_jax.load(path, expected_model_id="0x" + "00" * 32)


def test_save_is_atomic_and_leaves_no_temp_files(shipped_program, tmp_path):
    aivm_jax.save(shipped_program, tmp_path / "m.aivm")
    assert [p.name for p in tmp_path.iterdir()] == ["m.aivm"]
