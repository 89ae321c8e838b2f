"""Differential fuzz of the engines: random valid programs, every engine, rows alone and batched.

    python scripts/fuzz_engines.py --cases 500 --seed 7          # reference, jit, eager, rows alone
    python scripts/fuzz_engines.py --cases 200 --seed 7 --xla    # also a second process with
                                                                 # AIVM_INT8_GEMM=xla (kernels off)

Each case is `aivm_jax.runtime._fuzz.random_case(seed + i)`: the same program and inputs on
every machine, so a failing seed is a reproduction. Exits 1 when any engine differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from aivm_jax.ops._vnni import kernel_status, register_kernel
from aivm_jax.runtime import infer
from aivm_jax.runtime._fuzz import compare_engines, random_case, run_engines


def _jit_row_hashes(seeds, max_steps, max_batch) -> dict[str, list[str]]:
    out = {}
    for seed in seeds:
        case = random_case(seed, max_steps=max_steps, max_batch=max_batch)
        out[str(seed)] = list(infer(case.program, dict(case.feeds)).row_hashes)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=5)
    parser.add_argument(
        "--xla", action="store_true", help="also compare with AIVM_INT8_GEMM=xla in a subprocess"
    )
    parser.add_argument("--hashes", action="store_true", help="print the jit row hashes as JSON and exit")
    args = parser.parse_args(argv)
    seeds = range(args.seed, args.seed + args.cases)
    if args.hashes:
        print(json.dumps(_jit_row_hashes(seeds, args.max_steps, args.max_batch)))
        return 0
    print(f"CPU kernels: {kernel_status()}", flush=True)
    failures, start, here = [], time.perf_counter(), {}
    for seed in seeds:
        case = random_case(seed, max_steps=args.max_steps, max_batch=args.max_batch)
        results = run_engines(case)
        here[str(seed)] = list(infer(case.program, dict(case.feeds)).row_hashes)
        for problem in compare_engines(results):
            failures.append(f"seed {seed}: {problem}")
            print(failures[-1], case.program.op_counts(), flush=True)
        if (seed - args.seed + 1) % 25 == 0:
            print(f"{seed - args.seed + 1} cases, {time.perf_counter() - start:.0f} s", flush=True)
    if args.xla:
        if not register_kernel():
            print("the kernels are off here: jit already is the XLA engine", flush=True)
        else:
            command = [
                sys.executable,
                __file__,
                "--hashes",
                "--cases",
                str(args.cases),
                "--seed",
                str(args.seed),
            ]
            command += ["--max-steps", str(args.max_steps), "--max-batch", str(args.max_batch)]
            done = subprocess.run(
                command,
                env={**os.environ, "AIVM_INT8_GEMM": "xla"},
                capture_output=True,
                text=True,
                check=True,
            )
            xla = json.loads(done.stdout.strip().splitlines()[-1])
            failures += [f"seed {s}: AIVM_INT8_GEMM=xla row hashes differ" for s in here if xla[s] != here[s]]
    print(f"{args.cases} cases in {time.perf_counter() - start:.0f} s: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
