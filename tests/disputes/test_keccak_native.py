"""The batched native Keccak (``_native/keccak.cc``) against ``eth_utils`` and the Python paths.

Every native result is compared byte for byte with the pure-Python path it replaces: digests
with `keccak256_reference`, trees with `merkle_levels_python`, leaves with `leaf`, whole
traces with the Python commitment (the path taken where no compiler is found).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import (
    TAGS,
    _keccak,
    commit_values,
    faulty_values,
    leaf,
    step_values,
    tensor_slices,
    trace,
)
from aivm_jax.disputes._keccak import keccak256_batch, keccak256_reference
from aivm_jax.disputes._leaves import slice_leaves
from aivm_jax.disputes._merkle import merkle_levels, merkle_levels_python, merkle_proof, verify

VECTORS = {  # Keccak-256 (the original padding), as Ethereum uses it
    b"": "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470",
    b"abc": "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45",
    b"The quick brown fox jumps over the lazy dog": (
        "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15"
    ),
    b"testing": "5f16f4c7f149ac4f9510d9cf8cf384038ad348b3bcdc01915f95de12df9d1b02",
}


@pytest.fixture
def native():
    """The loaded library; the test is skipped where none can be built here."""
    library = _keccak.native_library()
    if library is None:
        pytest.skip(f"no native Keccak here: {_keccak.native_status()}")
    return library


@pytest.fixture
def python_only(monkeypatch):
    """Every caller takes its pure-Python path, as where no compiler is found."""
    monkeypatch.setattr(_keccak, "native_library", lambda: None)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, native):
    """Run the native calls with one thread, then with a helper (where the batch is large)."""
    before = native.aivm_keccak_threads(0)
    native.aivm_keccak_threads(request.param)
    yield request.param
    native.aivm_keccak_threads(before)


def test_standard_vectors(native):
    got = keccak256_batch(list(VECTORS))
    assert [d.hex() for d in got] == list(VECTORS.values())
    assert [keccak256_reference(m).hex() for m in VECTORS] == list(VECTORS.values())


def test_lengths_around_the_rate_and_random_messages(native, threads):
    rng = random.Random(20)
    lengths = [0, 1, 7, 8, 9, 31, 32, 33, 64, 127, 128, 134, 135, 136, 137, 271, 272, 273, 1000, 4097]
    lengths += [rng.randrange(0, 1400) for _ in range(6000)]  # over the parallel threshold in blocks
    messages = [rng.randbytes(n) for n in lengths]
    assert keccak256_batch(messages) == [keccak256_reference(m) for m in messages]
    for n in range(1, 9):  # every remainder of a batch of four, alone
        assert keccak256_batch(messages[:n]) == [keccak256_reference(m) for m in messages[:n]]
    assert keccak256_batch([]) == []


def test_python_fallback_hashes_the_same(python_only):
    messages = [bytes(range(n % 256)) * (n // 256 + 1) for n in range(0, 600, 37)]
    assert keccak256_batch(messages) == [keccak256_reference(m) for m in messages]


def test_merkle_levels_equal_the_python_tree_for_1_to_70_leaves(native):
    rng = random.Random(7)
    for n in range(1, 71):
        leaves = [rng.randbytes(32) for _ in range(n)]
        if n % 5 == 0:
            leaves[1 % n] = leaves[0]  # equal siblings: the sorted pair of two equal nodes
        levels = merkle_levels(leaves)
        assert levels == merkle_levels_python(leaves)
        assert all(type(node) is bytes and len(node) == 32 for level in levels for node in level)
        i = rng.randrange(n)
        assert verify(levels[-1][0], leaves[i], merkle_proof(leaves, i))


def test_merkle_levels_refuses_what_the_python_tree_refuses(native):
    with pytest.raises(CommitmentError, match="at least one leaf"):
        merkle_levels([])
    with pytest.raises(CommitmentError, match="32-byte"):
        merkle_levels([b"\0" * 32, b"short"])


def _random_tensor(rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(0, 4))))
    if rng.random() < 0.3:
        shape = shape[:-1] + (int(rng.integers(200, 700)),) if shape else (int(rng.integers(200, 700)),)
    dtype = np.int8 if rng.random() < 0.5 else np.int32
    info = np.iinfo(dtype)
    array = rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True).astype(dtype)
    if array.ndim >= 2 and rng.random() < 0.3:
        array = array.T  # not C-contiguous
    if rng.random() < 0.2:
        array = array.astype(array.dtype.newbyteorder(">"))  # big-endian: the same integers
    return array


def test_slice_leaves_equal_the_python_leaves_on_random_tensors(native):
    rng = np.random.default_rng(3)
    tag = TAGS["aivm.param.row.v1"]
    for k in range(60):
        array = _random_tensor(rng)
        want = [leaf(tag, k, j, data) for j, data in enumerate(tensor_slices(array))]
        assert slice_leaves(tag, k, array) == want


def test_slice_leaves_python_fallback(python_only):
    array = np.arange(-300, 300, dtype=np.int32).reshape(2, 300)
    tag = TAGS["aivm.param.col.v1"]
    assert slice_leaves(tag, 4, array) == [leaf(tag, 4, j, d) for j, d in enumerate(tensor_slices(array))]


def _python_trace(program, values, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(_keccak, "native_library", lambda: None)
        return commit_values(program, values)


def _assert_same_trace(got, want):
    """Every root, level and opening of two traces of the same values, byte for byte."""
    assert got.root == want.root and got.output_hash == want.output_hash
    assert got._levels == want._levels
    assert len(got.rows) == len(want.rows)
    for a, b in zip(got.rows, want.rows):
        assert a.root == b.root and a.step_roots == b.step_roots
        assert type(a.step_roots) is tuple and all(type(r) is bytes for r in a.step_roots)
        assert a._levels == b._levels
        assert len(a._step_levels) == len(b._step_levels) == got.steps
        assert list(a._step_levels) == list(b._step_levels)
        assert a._step_levels[-1] == b._step_levels[got.steps - 1]
        assert a._step_levels[1:3] == b._step_levels[1:3]
    rows, steps = len(got.rows), got.steps
    for row, step in [(0, 0), (rows - 1, steps - 1), (rows // 2, steps // 2)]:
        assert got.step(row, step) == want.step(row, step)
        for j in range(len(got.rows[row]._step_levels[step][0])):
            assert got.slice(row, step, j) == want.slice(row, step, j)
        assert got.row(row) == want.row(row)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_zoo_traces_equal_the_python_commitment(zoo, name, monkeypatch, threads):
    program, x = zoo[name]
    values = step_values(program, x)
    got = commit_values(program, values)
    _assert_same_trace(got, _python_trace(program, values, monkeypatch))
    # A lying trace (one element changed) too, and a batch of one.
    lying = faulty_values(program, x, len(values) // 2, row=1, element=0, delta=1)
    _assert_same_trace(commit_values(program, lying), _python_trace(program, lying, monkeypatch))
    _assert_same_trace(
        trace(program, x[:1]), _python_trace(program, step_values(program, x[:1]), monkeypatch)
    )


def test_random_traces_equal_the_python_commitment(zoo, monkeypatch, threads):
    """Random values of random shapes (one to many slices, rank 1 to 3, odd trees) in the
    layout of the digits-mlp program's steps."""
    program, _ = zoo["digits-mlp"]
    steps = len(program.inputs) + len(program.nodes)
    rng = np.random.default_rng(11)
    for batch in [1, 2, 5]:
        values = []
        for s in range(steps):
            row_shape = tuple(int(d) for d in rng.integers(1, 40, size=int(rng.integers(1, 4))))
            dtype = np.int8 if s % 3 else np.int32
            values.append(rng.integers(-128, 128, size=(batch, *row_shape)).astype(dtype))
        got = commit_values(program, values)
        _assert_same_trace(got, _python_trace(program, values, monkeypatch))


def test_a_large_trace_is_the_same_with_and_without_helper_threads(zoo, native):
    """Over the parallel threshold (16384 blocks) in its slice stage: 24 rows of 128 KiB."""
    program, _ = zoo["digits-mlp"]
    steps = len(program.inputs) + len(program.nodes)
    rng = np.random.default_rng(5)
    values = [rng.integers(-(2**31), 2**31, size=(24, 256, 128), dtype=np.int64).astype(np.int32)]
    values += [rng.integers(-128, 128, size=(24, 3, 5), dtype=np.int8) for _ in range(steps - 1)]
    before = native.aivm_keccak_threads(0)
    try:
        native.aivm_keccak_threads(1)
        alone = commit_values(program, values)
        native.aivm_keccak_threads(2)
        helped = commit_values(program, values)
    finally:
        native.aivm_keccak_threads(before)
    _assert_same_trace(helped, alone)


def test_bad_values_are_refused_on_both_paths(zoo, monkeypatch):
    program, x = zoo["digits-mlp"]
    values = step_values(program, x[:2])
    floats = [v.astype(np.float32) if s == 3 else v for s, v in enumerate(values)]
    for patch in [False, True]:
        with monkeypatch.context() as m:
            if patch:
                m.setattr(_keccak, "native_library", lambda: None)
            with pytest.raises(CommitmentError, match="int8 or int32"):
                commit_values(program, floats)
            with pytest.raises(CommitmentError, match="at least one leaf"):
                commit_values(program, [v[:0] for v in values])


def test_without_a_compiler_the_python_path_is_taken(monkeypatch, tmp_path):
    monkeypatch.delenv("AIVM_KECCAK", raising=False)
    monkeypatch.setattr(_keccak, "_build_dirs", lambda: [tmp_path / "build"])
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _keccak.build_native()
    _keccak._load.cache_clear()
    try:
        assert _keccak.native_library() is None
        assert _keccak.native_status().startswith("unavailable: no C++ compiler")
        assert keccak256_batch([b"abc"]) == [bytes.fromhex(VECTORS[b"abc"])]
    finally:
        _keccak._load.cache_clear()
    monkeypatch.setenv("AIVM_KECCAK", "python")
    try:
        assert _keccak.native_library() is None and _keccak.native_status() == "off: AIVM_KECCAK=python"
    finally:
        _keccak._load.cache_clear()
