"""Row and output hashes: the native SHA-256 path, the hashlib path and the spec agree byte for byte."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from aivm_jax.ops._vnni import kernel_status
from aivm_jax.runtime._hashing import output_hash, row_digests, row_hash_table, row_hashes
from aivm_jax.runtime._sha256 import native_available

MODEL_ID = "0x" + bytes(range(32)).hex()
NATIVE = native_available()


def spec_row_hashes(model_id: str, names, outputs) -> list[str]:
    """The row hash exactly as `_hashing`'s docstring defines it, one message per row."""
    hashes = []
    for row in range(outputs[0].shape[0]):
        message = b"aivm-row-v1" + bytes.fromhex(model_id[2:])
        for name, out in zip(names, outputs):
            shape = out.shape[1:]
            message += struct.pack("<H", len(name.encode())) + name.encode() + out.dtype.name.encode()
            message += struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape)
            message += out[row].astype(out.dtype.newbyteorder("<")).tobytes()
        hashes.append("0x" + hashlib.sha256(message).hexdigest())
    return hashes


def both_paths(names, outputs) -> list[tuple[bytes, list[str]]]:
    paths = [row_hash_table(MODEL_ID, names, outputs, native=False)]
    if NATIVE:
        paths.append(row_hash_table(MODEL_ID, names, outputs, native=True))
    return paths


def test_the_native_path_runs_wherever_the_sha_extensions_and_a_build_do():
    """From the kernels' library where it runs, else from row_hash.cc built alone (AVX2 + SHA-NI)."""
    import os
    import shutil

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    built = kernel_status().startswith("avx512-vnni") or shutil.which(os.environ.get("CXX", "g++"))
    if " sha_ni" in flags and built:
        assert NATIVE  # CI's machines have both
    else:
        assert not NATIVE
        with pytest.raises(RuntimeError, match="does not run here"):
            row_hash_table(MODEL_ID, ["y"], [np.zeros((1, 2), np.int8)], native=True)


@pytest.mark.parametrize("row_bytes", range(0, 140))
def test_every_message_length_modulo_64(row_bytes):
    rng = np.random.default_rng(row_bytes)
    out = rng.integers(-128, 128, (3, row_bytes), dtype=np.int8)
    want = spec_row_hashes(MODEL_ID, ["logits"], [out])
    for blob, hashes in both_paths(["logits"], [out]):
        assert hashes == want
        assert blob == b"".join(bytes.fromhex(h[2:]) for h in want)


@pytest.mark.parametrize(
    "shapes_dtypes",
    [
        [((5,), np.int32)],  # one value per row (rank-0 rows)
        [((7, 10), np.int32)],
        [((4, 3, 5, 2), np.int8), ((4, 8), np.int32)],  # two outputs: the second's header in every row
        [((300, 384), np.int32), ((300,), np.int64), ((300, 1), np.uint8)],
        [((0, 4), np.int32)],  # no rows
    ],
)
def test_many_outputs_dtypes_and_batches_match_the_spec(shapes_dtypes):
    rng = np.random.default_rng(len(shapes_dtypes))
    names = [f"out{i}" for i in range(len(shapes_dtypes))]
    outputs = [
        rng.integers(np.iinfo(d).min, np.iinfo(d).max, s, dtype=d, endpoint=True) for s, d in shapes_dtypes
    ]
    want = spec_row_hashes(MODEL_ID, names, outputs)
    for blob, hashes in both_paths(names, outputs):
        assert hashes == want
        assert len(blob) == 32 * len(want)
    assert row_hashes(MODEL_ID, names, outputs) == want
    assert ["0x" + d.hex() for d in row_digests(MODEL_ID, names, outputs)] == want


def test_byte_order_and_layout_do_not_change_a_row_hash():
    out = np.arange(-60, 60, dtype=np.int32).reshape(6, 20)
    want = spec_row_hashes(MODEL_ID, ["y"], [out])
    for variant in (out.astype(">i4"), np.asfortranarray(out), out[:, ::-1][:, ::-1], out.T.copy().T):
        for _, hashes in both_paths(["y"], [variant]):
            assert hashes == want


def test_a_changed_value_changes_only_its_row():
    out = np.zeros((8, 33), np.int32)
    before = row_hashes(MODEL_ID, ["y"], [out])
    out[5, 32] = 1
    after = row_hashes(MODEL_ID, ["y"], [out])
    assert [a != b for a, b in zip(after, before)] == [False] * 5 + [True] + [False] * 2


def test_the_output_hash_takes_strings_digests_or_their_concatenation():
    out = np.arange(40, dtype=np.int32).reshape(4, 10)
    blob, hashes = row_hash_table(MODEL_ID, ["y"], [out])
    digests = row_digests(MODEL_ID, ["y"], [out])
    spec = hashlib.sha256(b"aivm-out-v1" + bytes(range(32)) + struct.pack("<Q", 4) + blob).hexdigest()
    assert output_hash(MODEL_ID, hashes) == output_hash(MODEL_ID, digests) == output_hash(MODEL_ID, blob)
    assert output_hash(MODEL_ID, blob) == "0x" + spec
    with pytest.raises(ValueError, match="multiple of 32"):
        output_hash(MODEL_ID, blob[:-1])


def test_hex_hashes_decode_to_their_digests_all_at_once():
    from aivm_jax.runtime._hashing import digests_from_hex

    out = np.arange(300, dtype=np.int32).reshape(30, 10)
    blob, hashes = row_hash_table(MODEL_ID, ["y"], [out])
    assert digests_from_hex(hashes) == blob == digests_from_hex(np.array(hashes))
    assert digests_from_hex([h.upper().replace("0X", "0x") for h in hashes]) == blob
    assert digests_from_hex([]) == b""
    for bad in ("0x" + "g" * 64, "0y" + "0" * 64, "0x" + "0" * 63, hashes[0] + "0", "1x" + hashes[0][2:]):
        with pytest.raises(ValueError, match="64 hex digits"):
            digests_from_hex([hashes[0], bad])


def test_a_native_function_that_disagrees_with_hashlib_is_never_used():
    import ctypes

    from aivm_jax.runtime._sha256 import _agrees_with_hashlib, _native

    def off_by_one_bit(count, parts, data, sizes, strides, digests, hex_digits):
        _native()(count, parts, data, sizes, strides, digests, hex_digits)
        if count and ctypes.c_int64(sizes[0]).value == 100:  # wrong for one length only
            ctypes.cast(digests, ctypes.POINTER(ctypes.c_uint8))[31] ^= 1

    if NATIVE:
        assert _agrees_with_hashlib(_native())
        with pytest.warns(RuntimeWarning, match="disagrees with hashlib"):
            assert not _agrees_with_hashlib(off_by_one_bit)
