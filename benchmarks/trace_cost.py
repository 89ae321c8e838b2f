"""Trace time vs plain `infer` time (issue 20's target: a trace costs at most 3x `infer`).

.venv/bin/python benchmarks/trace_cost.py [--rounds 30] [--program NAME=FILE.aivm ...]

The conformance zoo programs run on their committed input batch; ``--program`` adds a
built program (``minilm-l6``, ``char-gpt``: `aivm_jax.models.build`, then
`aivm_jax.program.save`) fed the synthetic batch `_inputs` makes for it. `infer` and
`trace` are interleaved round by round after a warm-up (compilation excluded). The table
gives each one's median and the ratio of the medians, the ratio of the fastest calls
(this shared machine's load inflates the medians of long calls more than short ones), and
the trace's split into computing every step's output (`step_values`: one jitted function)
and committing to them (`commit_values`: the batched Keccak, ``_native/keccak.cc``, plus
the output hash). The Keccak path in use is printed first (``AIVM_KECCAK=python``: the
pure-Python one, for comparison).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _timing import machine_line

from aivm_jax import infer
from aivm_jax.conformance import DATA_DIR
from aivm_jax.disputes import commit_values, step_values, trace
from aivm_jax.disputes._keccak import native_library, native_status
from aivm_jax.program import Program, load


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _inputs(program: Program, batch: int = 4, length: int = 32) -> dict[str, np.ndarray]:
    """A deterministic batch for a program's named inputs: each dynamic axis ``length`` long
    (at most its maximum), values drawn within the input's declared bounds (else 0..100),
    and an input named like a mask all ones."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in program.inputs:
        shape = [min(d, length) if a in spec.dynamic else d for a, d in enumerate(spec.shape)]
        low, high = spec.bounds if spec.bounds else (0, 100)
        if "mask" in spec.name:
            value = np.ones((batch, *shape))
        else:
            value = rng.integers(low, high + 1, size=(batch, *shape))
        feeds[spec.name] = value.astype(spec.dtype)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--program", action="append", default=[], metavar="NAME=FILE")
    args = parser.parse_args()
    library = native_library()
    threads = library.aivm_keccak_threads(0) if library is not None else 1
    print(machine_line())
    print(f"keccak: {native_status()}, {threads} thread(s); {args.rounds} interleaved rounds")
    cases = []
    for name in ("digits-mlp", "digits-cnn"):
        cases.append((name, load(DATA_DIR / f"{name}.aivm"), np.load(DATA_DIR / f"{name}.inputs.npy")))
    for entry in args.program:
        name, _, path = entry.partition("=")
        program = load(Path(path))
        cases.append((name, program, _inputs(program)))
    print(
        f"{'program':<12} {'batch':>5} {'infer ms':>9} {'trace ms':>9} {'ratio':>6} {'best':>6}"
        f" {'values ms':>10} {'commit ms':>10}"
    )
    for name, program, x in cases:
        assert trace(program, x).output_hash == infer(program, x).output_hash  # warm-up and check
        values = step_values(program, x)
        times: dict[str, list[float]] = {"infer": [], "trace": [], "values": [], "commit": []}
        for _ in range(args.rounds):
            times["infer"].append(_timed(infer, program, x))
            times["trace"].append(_timed(trace, program, x))
            times["values"].append(_timed(step_values, program, x))
            times["commit"].append(_timed(commit_values, program, values))
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        best = min(times["trace"]) / min(times["infer"])
        batch = next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]
        print(
            f"{name:<12} {batch:>5} {ms['infer']:>9.3f} {ms['trace']:>9.3f} "
            f"{ms['trace'] / ms['infer']:>5.1f}x {best:>5.1f}x {ms['values']:>10.3f} {ms['commit']:>10.3f}"
        )


if __name__ == "__main__":
    main()
