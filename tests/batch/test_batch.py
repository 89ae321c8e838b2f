"""Batch jobs: Merkle commitments, resumption after a kill or corruption, devices and processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import aivm_jax
from aivm_jax import BatchJobError, InputFileError
from aivm_jax.batch import merkle_proof, merkle_root, read_batch_inputs, run_batch, verify_merkle_proof
from aivm_jax.conformance import DATA_DIR


def _independent_root(hashes):
    """The same tree, written recursively: split at the largest power of two below n."""
    leaves = [hashlib.sha256(b"\0" + bytes.fromhex(h[2:])).digest() for h in hashes]

    def build(level):
        while len(level) > 1:
            nxt = [
                hashlib.sha256(b"\1" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
            ]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        return level[0]

    return "0x" + build(leaves).hex()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 31, 32, 33, 64, 65, 127, 1000])
def test_merkle_root_and_proofs(n):
    # from 32 nodes a level is hashed natively where the SHA extensions run: both paths meet here
    hashes = ["0x" + hashlib.sha256(i.to_bytes(2, "little")).hexdigest() for i in range(n)]
    root = merkle_root(hashes)
    assert root == _independent_root(hashes)
    for i in sorted({*range(min(n, 9)), n // 2, n - 2, n - 1} - {-1}):
        h = hashes[i]
        assert verify_merkle_proof(h, merkle_proof(hashes, i), root)
    assert not verify_merkle_proof("0x" + "00" * 32, merkle_proof(hashes, 0), root)
    if n > 1:
        assert merkle_root(hashes[::-1]) != root  # order matters


@pytest.fixture()
def mlp():
    return aivm_jax.load(DATA_DIR / "digits-mlp.aivm")


def _rows(program, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n, *program.inputs[0].shape)).astype(np.int8)


def test_a_job_commits_to_every_row_and_resumes(mlp, tmp_path):
    x = _rows(mlp, 1000)
    direct = aivm_jax.infer(mlp, x)
    calls = []
    first = run_batch(mlp, x, tmp_path / "job", chunk_rows=128, progress=lambda d, t: calls.append((d, t)))
    assert first.rows == 1000 and first.chunks_computed == 8 and first.chunks_reused == 0
    assert first.merkle_root == merkle_root(direct.row_hashes)
    assert first.output_hash == direct.output_hash
    with np.load(tmp_path / "job" / "outputs.npz") as outs:
        np.testing.assert_array_equal(outs["y"], direct.outputs)
    assert (tmp_path / "job" / "row_hashes.txt").read_text().split() == list(direct.row_hashes)
    assert calls[-1] == (8, 8)
    again = run_batch(mlp, x, tmp_path / "job", chunk_rows=128)
    assert (again.chunks_computed, again.chunks_reused, again.merkle_root) == (0, 8, first.merkle_root)
    # a corrupted chunk (flipped bytes in its stored outputs) is detected and recomputed
    chunk = tmp_path / "job" / "chunks" / "00000003.npz"
    with np.load(chunk) as stored:
        arrays = dict(stored)
    arrays["out.y"] = arrays["out.y"] + 1
    np.savez(chunk, **arrays)
    (tmp_path / "job" / "chunks" / "00000005.npz").write_bytes(b"partial")
    repaired = run_batch(mlp, x, tmp_path / "job", chunk_rows=128)
    assert (repaired.chunks_computed, repaired.chunks_reused, repaired.merkle_root) == (
        2,
        6,
        first.merkle_root,
    )


def test_a_directory_refuses_another_job(mlp, tmp_path):
    run_batch(mlp, _rows(mlp, 50), tmp_path / "job", chunk_rows=16)
    with pytest.raises(BatchJobError, match="different job"):
        run_batch(mlp, _rows(mlp, 50, seed=1), tmp_path / "job", chunk_rows=16)
    with pytest.raises(BatchJobError, match="different job"):
        run_batch(mlp, _rows(mlp, 50), tmp_path / "job", chunk_rows=32)


def test_input_files(mlp, tmp_path):
    x = _rows(mlp, 10)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(read_batch_inputs(mlp, tmp_path / "x.npy")["x"], x)
    np.savez(tmp_path / "x.npz", x=x)
    np.testing.assert_array_equal(read_batch_inputs(mlp, tmp_path / "x.npz")["x"], x)
    np.savez(tmp_path / "wrong.npz", images=x)
    with pytest.raises(InputFileError, match="inputs are"):
        read_batch_inputs(mlp, tmp_path / "wrong.npz")
    with pytest.raises(InputFileError, match="no input file"):
        read_batch_inputs(mlp, tmp_path / "missing.npy")


def _aivm(*args):
    return [sys.executable, "-m", "aivm_jax.cli", *args]


def _json(stdout: str) -> dict:
    """The command's JSON (gloo prints a connection line on stdout before it)."""
    return json.loads(stdout[stdout.index("{\n") :])


def _env(devices=1):
    return dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
    )


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_root(tmp_path):
    program = aivm_jax.load(DATA_DIR / "digits-cnn.aivm")
    x = _rows(program, 40_000)
    np.save(tmp_path / "x.npy", x)
    expected = merkle_root(aivm_jax.infer(program, x).row_hashes)
    out = tmp_path / "job"
    args = _aivm(
        "batch", str(DATA_DIR / "digits-cnn.aivm"), "--input", str(tmp_path / "x.npy"), "--out", str(out)
    )
    args += ["--chunk-rows", "64", "--json"]
    child = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list((out / "chunks").glob("*.npz"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "result.json").exists(), "the job finished before it could be killed"
    kept = len(list((out / "chunks").glob("*.npz")))
    assert 20 <= kept < 625
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["merkle_root"] == expected
    assert result["rows"] == 40_000
    assert result["chunks_reused"] >= kept - 1  # at most the chunk in flight is redone
    assert result["chunks_computed"] + result["chunks_reused"] == 625


@pytest.mark.slow
def test_one_process_eight_devices_and_two_processes_agree(tmp_path):
    program = aivm_jax.load(DATA_DIR / "digits-cnn.aivm")
    x = _rows(program, 3001)
    np.save(tmp_path / "x.npy", x)
    expected = merkle_root(aivm_jax.infer(program, x).row_hashes)
    common = [
        str(DATA_DIR / "digits-cnn.aivm"),
        "--input",
        str(tmp_path / "x.npy"),
        "--chunk-rows",
        "500",
        "--json",
    ]
    eight = subprocess.run(
        _aivm("batch", *common, "--out", str(tmp_path / "eight")),
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert eight.returncode == 0, eight.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            _aivm(
                "batch",
                *common,
                "--out",
                str(tmp_path / "two"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    roots = {_json(o)["merkle_root"] for o, _ in outs}
    assert roots == {_json(eight.stdout)["merkle_root"]} == {expected}
    computed = [_json(o)["chunks_computed"] for o, _ in outs]
    assert computed == [4, 3]  # chunks 0,2,4,6 and 1,3,5: the work was split
