"""A data set through `aivm batch` vs the same rows through onnxruntime (QDQ int8) and float JAX.

    .venv/bin/python benchmarks/batch_throughput.py [--rows N] [--chunk-rows C] [--repeats R]

digits-cnn on N rows (the held-out images, repeated), C rows per chunk, all in
this process. "aivm batch" is `aivm_jax.batch.run_batch` into a new directory:
the input digest, then every chunk run, row-hashed and written atomically
(fsync), then every chunk read back and re-hashed, the Merkle root,
``outputs.npz`` and ``row_hashes.txt``. "aivm resume" reruns it on the finished
directory (every chunk read and re-hashed, none recomputed). "aivm infer" is
`aivm_jax.infer` chunk by chunk in memory (row hashes, nothing written). The
peers run the same chunks and keep their outputs in memory: "ort qdq" is
onnxruntime 1.31 on the recipe's float model after `quantize_static` (as in
``zoo_throughput.py``), "float jax" the jitted Flax model. Rows per second, the
median of R passes over all N rows; ratios are AIVM / peer (> 1: the AIVM is faster).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from _timing import machine_line
from zoo_throughput import digits_peers

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.batch import merkle_root, run_batch
from aivm_jax.models import (
    DIGITS_RECIPES,
    PIXEL_SCALE,
    build,
    load_digits_data,
)
from aivm_jax.ops._vnni import kernel_status
from aivm_jax.runtime import infer

MODEL = "digits-cnn"


def _rate(rows: int, repeats: int, one_pass) -> float:
    """Rows per second: the median of ``repeats`` timed passes (after one untimed pass)."""
    one_pass()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = DIGITS_RECIPES[MODEL]
    data = load_digits_data()
    program = build(MODEL)
    x_int = np.resize(data.x_test, (args.rows, 64)).reshape((args.rows, *recipe.input_shape))
    x_float = (x_int * PIXEL_SCALE).astype(np.float32)
    starts = range(0, args.rows, args.chunk_rows)
    params, float_fn, session = digits_peers(recipe, data)
    print(f"{machine_line()}; engine: {kernel_status()}")
    print(f"{MODEL}: {args.rows} rows in chunks of {args.chunk_rows}; rows per second")

    with tempfile.TemporaryDirectory() as scratch:
        jobs = iter(range(10**6))
        last: dict = {}

        def batch_pass():
            last["job"] = Path(scratch) / f"job{next(jobs)}"
            last["result"] = run_batch(program, x_int, last["job"], chunk_rows=args.chunk_rows)

        rates = {"aivm batch": _rate(args.rows, args.repeats, batch_pass)}
        done = last["result"]
        rates["aivm resume"] = _rate(
            args.rows,
            args.repeats,
            lambda: run_batch(program, x_int, last["job"], chunk_rows=args.chunk_rows),
        )
    hashes: list[str] = []

    def infer_pass():
        hashes.clear()
        for s in starts:
            hashes.extend(infer(program, x_int[s : s + args.chunk_rows]).row_hashes)

    rates["aivm infer"] = _rate(args.rows, args.repeats, infer_pass)
    if merkle_root(hashes) != done.merkle_root:
        raise SystemExit("aivm batch and infer disagree on the Merkle root")
    x_dev = [jax.device_put(x_float[s : s + args.chunk_rows]) for s in starts]
    rates["float jax"] = _rate(
        args.rows, args.repeats, lambda: [np.asarray(float_fn(params, x)) for x in x_dev]
    )
    if session is not None:
        chunks = [x_float[s : s + args.chunk_rows] for s in starts]
        rates["ort qdq"] = _rate(
            args.rows, args.repeats, lambda: [session.run(None, {"x": c}) for c in chunks]
        )
    header = f"{'engine':12s} {'rows/s':>11s} {'batch vs it':>12s}"
    print(header)
    print("-" * len(header))
    for name, rate in rates.items():
        print(f"{name:12s} {rate:11,.0f} {rates['aivm batch'] / rate:11.2f}x")
    print(f"merkle root {done.merkle_root} ({done.rows} rows, {done.chunks_computed} chunks)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB (every contender)")


if __name__ == "__main__":
    main()
