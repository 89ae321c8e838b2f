"""Resumable batch jobs: a large data set through one program, sharded over devices and hosts.

Layout of the output directory (every file is written to a temporary name,
flushed and renamed, so a crash leaves either a whole file or none):

* ``job.json``: what the job is (model id, SHA-256 of the input data, rows,
  chunk size). A rerun with the same directory must describe the same job.
* ``chunks/NNNNNNNN.npz``: the outputs and row hashes of one chunk of rows.
  On a rerun, a chunk whose stored outputs re-hash to its stored row hashes
  is kept; anything else (missing, partial, corrupted) is recomputed. So a
  killed job loses at most the chunks in flight and never duplicates a row.
* ``outputs.npz`` (every output by name, all rows), ``row_hashes.txt`` and,
  last, ``result.json`` with the Merkle root over the row hashes.

Across hosts (``jax.distributed``), process ``p`` of ``n`` computes chunks
``p, p + n, ...`` on its local devices; all processes meet at a barrier
(CPU collectives), process 0 assembles the result and the others read it.
The hosts must share the output directory. Since every row hash depends
only on its row, the root is the same for any number of devices or processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import BatchJobError, InputFileError, InputShapeError
from aivm_jax.batch._merkle import merkle_root_of_digests
from aivm_jax.program import Program, load
from aivm_jax.runtime import infer, output_hash, read_input_file, read_named_inputs
from aivm_jax.runtime._hashing import digests_from_hex, row_hash_table

__all__ = ["BatchResult", "init_distributed", "read_batch_inputs", "run_batch"]

JOB_FORMAT = "aivm-batch/1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchResult:
    """A finished job: the Merkle root is the commitment a node posts for the batch."""

    model_id: str
    rows: int
    merkle_root: str
    output_hash: str
    out_dir: Path
    chunks_computed: int
    chunks_reused: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "rows": self.rows,
            "merkle_root": self.merkle_root,
            "output_hash": self.output_hash,
            "out_dir": str(self.out_dir),
            "chunks_computed": self.chunks_computed,
            "chunks_reused": self.chunks_reused,
        }


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_batch_inputs(program: Program, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Inputs of a job: ``.npy`` for a one-input program (memory-mapped), ``.npz`` by input name.

    Raises:
      InputFileError: missing or unreadable file, or names that do not match the program's inputs.
    """
    names = [s.name for s in program.inputs]
    path = Path(path)
    if path.suffix == ".npz":
        arrays = read_named_inputs(path)
    else:
        single = read_input_file(path, mmap=True)
        arrays = {names[0]: single} if len(names) == 1 else {}
    if sorted(arrays) != sorted(names):
        raise InputFileError(
            f"{path} holds {sorted(arrays) or 'one array'}; the program's inputs are {names} "
            "(use .npz with one array per input name for a multi-input program)"
        )
    return arrays


def _data_digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        step = 1 << 16
        for start in range(0, a.shape[0], step):
            h.update(np.ascontiguousarray(a[start : start + step]).tobytes())
    return h.hexdigest()


def _chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / "chunks" / f"{index:08d}.npz"


def _load_chunk(
    program: Program, path: Path, rows: int
) -> tuple[dict[str, np.ndarray], np.ndarray, bytes] | None:
    """A stored chunk if it is whole and its outputs re-hash to its row hashes: its outputs, its
    row hashes (a string array) and their digests; else None."""
    try:
        with np.load(path) as archive:
            outs = {s.name: archive[f"out.{s.name}"] for s in program.outputs}
            hashes = archive["row_hashes"]
        stored = digests_from_hex(hashes)
    except (OSError, ValueError, KeyError, EOFError):
        return None
    names = [s.name for s in program.outputs]
    if hashes.shape != (rows,) or any(o.shape[0] != rows for o in outs.values()):
        return None
    if row_hash_table(program.model_id, names, [outs[n] for n in names])[0] != stored:
        return None
    return outs, hashes, stored


def _save_chunk(path: Path, outs: Mapping[str, np.ndarray], hashes: np.ndarray) -> None:
    arrays = {f"out.{k}": v for k, v in outs.items()}
    arrays["row_hashes"] = hashes
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _check_job(out_dir: Path, job: dict[str, Any]) -> None:
    path = out_dir / "job.json"
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError):
            existing = None
        if existing != job:
            raise BatchJobError(
                f"{out_dir} holds a different job ({path}): same program, same input data and "
                "same chunk size are needed to resume; use another --out directory for a new job"
            )
    else:
        _atomic_write(path, lambda f: f.write(json.dumps(job, indent=1, sort_keys=True)), "w")


def run_batch(
    model: Program | str | os.PathLike,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    out_dir: str | os.PathLike,
    *,
    chunk_rows: int = 4096,
    devices: Any = "all",
    progress: Callable[[int, int], None] | None = None,
    expected_model_id: str | None = None,
) -> BatchResult:
    """Run every row of ``inputs`` through the program; resume whatever a previous run left.

    Args:
      model: a `Program` or a ``.aivm`` path.
      inputs: a dict of arrays by input name (or one array for a one-input
        program) with the rows on the first axis; may be memory-mapped.
      out_dir: the job directory (created; reused to resume).
      chunk_rows: rows per chunk, the unit of progress and of resumption.
      devices: ``"all"`` local devices (default), a list, or ``None`` for one device.
      progress: called with ``(chunks done, chunks of this process)``.

    Returns:
      A `BatchResult`; in a multi-process run every process returns the same one.

    Raises:
      BatchJobError: ``out_dir`` holds another job.
      InputShapeError, InputRangeError, InputDTypeError: as `infer` raises them.
    """
    import jax

    program = model if isinstance(model, Program) else load(model, expected_model_id=expected_model_id)
    if not isinstance(inputs, Mapping):
        if len(program.inputs) != 1:
            raise InputShapeError(f"program has inputs {[s.name for s in program.inputs]}; pass a dict")
        inputs = {program.inputs[0].name: inputs}
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    sizes = {a.shape[0] for a in inputs.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise InputShapeError(f"all inputs need the same, non-zero number of rows; got {sorted(sizes)}")
    total = sizes.pop()
    out_dir = Path(out_dir)
    job = {
        "format": JOB_FORMAT,
        "model_id": program.model_id,
        "inputs_sha256": _data_digest(inputs),
        "rows": total,
        "chunk_rows": chunk_rows,
    }
    process, processes = jax.process_index(), jax.process_count()
    if process == 0:
        _check_job(out_dir, job)
    _barrier("aivm-batch-job", processes)
    if process != 0:
        _check_job(out_dir, job)
    chunks = -(-total // chunk_rows)
    mine = list(range(process, chunks, processes))
    local = jax.local_devices() if devices == "all" else devices
    computed = reused = 0
    verified: dict[int, tuple[dict[str, np.ndarray], np.ndarray, bytes]] = {}  # this process's chunks
    for done, index in enumerate(mine, start=1):
        start, stop = index * chunk_rows, min((index + 1) * chunk_rows, total)
        path = _chunk_path(out_dir, index)
        loaded = _load_chunk(program, path, stop - start) if path.exists() else None
        if loaded is not None:
            reused += 1
        else:
            feeds = {name: np.asarray(a[start:stop]) for name, a in inputs.items()}
            result = infer(program, feeds, devices=local)
            hashes = np.array(result.row_hashes)
            _save_chunk(path, result.named_outputs, hashes)
            loaded = (result.named_outputs, hashes, digests_from_hex(hashes))
            computed += 1
        if process == 0:  # it assembles the result; the others' chunks are read from disk
            verified[index] = loaded
        if progress is not None:
            progress(done, len(mine))
    _barrier("aivm-batch-chunks", processes)
    if process == 0:  # the chunks it checked or wrote itself are not read again
        _assemble(program, out_dir, total, chunk_rows, chunks, verified)
    _barrier("aivm-batch-result", processes)
    summary = json.loads((out_dir / "result.json").read_text())
    return BatchResult(
        model_id=program.model_id,
        rows=total,
        merkle_root=summary["merkle_root"],
        output_hash=summary["output_hash"],
        out_dir=out_dir,
        chunks_computed=computed,
        chunks_reused=reused,
    )


def _assemble(
    program: Program,
    out_dir: Path,
    total: int,
    chunk_rows: int,
    chunks: int,
    verified: Mapping[int, tuple[dict[str, np.ndarray], np.ndarray, bytes]],
) -> None:
    outs: dict[str, list[np.ndarray]] = {s.name: [] for s in program.outputs}
    hashes: list[np.ndarray] = []
    digests: list[bytes] = []
    for index in range(chunks):
        rows = min(chunk_rows, total - index * chunk_rows)
        loaded = verified.get(index) or _load_chunk(program, _chunk_path(out_dir, index), rows)
        if loaded is None:
            raise BatchJobError(
                f"chunk {index} of {out_dir} is missing or corrupt after every process finished"
            )
        for name, array in loaded[0].items():
            outs[name].append(array)
        hashes.append(loaded[1])
        digests.append(loaded[2])
    merged = {name: np.concatenate(parts) for name, parts in outs.items()}
    _atomic_write(out_dir / "outputs.npz", lambda f: np.savez(f, **merged))
    lines = "\n".join(np.concatenate(hashes).astype(str).tolist()) + "\n"
    _atomic_write(out_dir / "row_hashes.txt", lambda f: f.write(lines), "w")
    summary = {
        "model_id": program.model_id,
        "rows": total,
        "merkle_root": merkle_root_of_digests(b"".join(digests)),
        "output_hash": output_hash(program.model_id, b"".join(digests)),
    }
    _atomic_write(out_dir / "result.json", lambda f: f.write(json.dumps(summary, indent=1)), "w")


def _barrier(name: str, processes: int) -> None:
    """All processes meet here (a collective over every device); a no-op for one process."""
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def init_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process job (``jax.distributed``) with CPU collectives over gloo."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
