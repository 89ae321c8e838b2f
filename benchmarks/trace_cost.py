"""Trace time vs plain `infer` time for each conformance zoo program (issue 20's target: <= 3x).

.venv/bin/python benchmarks/trace_cost.py [--rounds 30]

Both run on the program's committed input batch, interleaved round by round after a
warm-up (compilation excluded); the table gives each one's median and the ratio, and the
trace's split into computing every step's output (one jitted function) and hashing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from aivm_jax import infer
from aivm_jax.conformance import DATA_DIR
from aivm_jax.disputes import commit_values, step_values, trace
from aivm_jax.program import load


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {args.rounds} interleaved rounds, medians")
    print(
        f"{'program':<12} {'batch':>5} {'infer ms':>9} {'trace ms':>9} {'ratio':>6} {'values ms':>10} {'hash ms':>8}"
    )
    for name in ("digits-mlp", "digits-cnn"):
        program = load(DATA_DIR / f"{name}.aivm")
        x = np.load(DATA_DIR / f"{name}.inputs.npy")
        assert trace(program, x).output_hash == infer(program, x).output_hash  # warm-up and check
        values = step_values(program, x)
        times: dict[str, list[float]] = {"infer": [], "trace": [], "values": [], "hash": []}
        for _ in range(args.rounds):
            times["infer"].append(_timed(infer, program, x))
            times["trace"].append(_timed(trace, program, x))
            times["values"].append(_timed(step_values, program, x))
            times["hash"].append(_timed(commit_values, program, values))
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(
            f"{name:<12} {x.shape[0]:>5} {ms['infer']:>9.3f} {ms['trace']:>9.3f} "
            f"{ms['trace'] / ms['infer']:>5.1f}x {ms['values']:>10.3f} {ms['hash']:>8.3f}"
        )


if __name__ == "__main__":
    main()
