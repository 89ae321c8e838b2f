"""Every figure against its peer in one run: ratios measured side by side, engines taking turns.

    .venv/bin/python benchmarks/run_all.py [--quick] [--rounds N] [--sections probe,callpath,gemm,onnx]

Each figure is timed in rounds: a round gives every contender a block of calls (at
least ``--block`` seconds) one after the other, after a short rest, so this shared
machine's drift falls on all contenders alike. A ratio is computed per round from
the block medians, and the table prints the median ratio over the rounds with its
lowest and highest round. Ratios are AIVM speed / peer speed (> 1: the AIVM is
faster), except ``infer / program``, a time ratio (the call's cost over the
compiled program alone; 1.0 is free).

Sections:

* ``probe``: onnxruntime's ``MatMulInteger`` (u8 x s8, its fastest int8 kernel)
  on a 1024^3 product (512^3 with ``--quick``), GOP/s, at the start and at the
  end, so a slow spell of the machine is visible.
* ``callpath``: per zoo model (the shipped programs) and batch (1 and 64), the
  full ``aivm_jax.infer`` call (NumPy int8 rows in, outputs and hashes out) vs
  the compiled program alone ("program": device-resident input, outputs left on
  the device, as ``zoo_throughput.py``'s "aivm jit"), vs the same executable with
  host input and output ("program host"), and vs onnxruntime QDQ int8 of the same
  recipe fed float rows (``zoo_throughput.py``'s peer: ``quantize_static``,
  per-channel int8 weights, int8 activations). Targets from issue 24: infer
  within 1.3x of the program at batch 1, and at least 1.0x onnxruntime at batch 1
  and 64.
* ``gemm``: ``int8_gemm.py``'s shapes (a subset with ``--quick``), the AIVM's int8
  GEMM vs ``MatMulInteger`` u8 x s8; the AIVM's product is checked against the
  int64 one, and a peer that is not exact (onnxruntime without VNNI saturates)
  is marked "ort inexact".
* ``onnx``: ``onnx_import.py``'s table: models exported by torch (an MLP with
  BatchNorm1d, a residual CNN, a small BERT-like encoder) imported with
  `aivm_jax.quant.import_onnx`, `infer` fed float rows vs onnxruntime float and
  QDQ int8 on the same ONNX file, batch 1 and 64, with fidelity side by side.

Needs the benchmark extra (``pip install -e '.[bench]'``) for the onnxruntime peers.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_line  # noqa: E402

import aivm_jax  # noqa: E402,F401  (determinism flags before JAX starts)
from aivm_jax.conformance import DATA_DIR  # noqa: E402
from aivm_jax.ops._vnni import kernel_status  # noqa: E402
from aivm_jax.runtime import infer  # noqa: E402
from aivm_jax.runtime._infer import _compiled_for  # noqa: E402

SECTIONS = ("probe", "callpath", "gemm", "onnx")
QUICK_GEMM = ("square", "digits-mlp fc1", "digits-cnn conv2", "minilm qkvo")


def timed_rounds(calls: dict, rounds: int, block: float, rest: float = 0.02) -> dict[str, list[float]]:
    """Per contender, its median call time (s) in each round: ``calls`` maps a name to a
    zero-argument function (results blocked on); every round runs a block of at least ``block``
    seconds of each, in turn, after ``rest`` seconds of quiet (a peer's spinning pool threads)."""
    for fn in calls.values():
        for _ in range(3):
            jax.block_until_ready(fn())
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            time.sleep(rest)
            times, total = [], 0.0
            while total < block or len(times) < 3:
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times.append(time.perf_counter() - start)
                total += times[-1]
            medians[name].append(statistics.median(times))
    return medians


def ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``numerator / denominator``."""
    values = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(values), min(values), max(values)


def fmt(r: tuple[float, float, float]) -> str:
    return f"{r[0]:5.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _ort_gemm(m: int, k: int, n: int):
    from int8_gemm import _ort_session

    return _ort_session(m, k, n)


def probe(size: int, rounds: int) -> float:
    """onnxruntime ``MatMulInteger`` u8 x s8 GOP/s on a size^3 product (median over rounds)."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    b = rng.integers(-128, 128, (size, size), dtype=np.int8)
    session = _ort_gemm(size, size, size)
    seconds = timed_rounds({"ort": lambda: session.run(None, {"A": a, "B": b})}, rounds, 0.1)["ort"]
    return 2 * size**3 / statistics.median(seconds) / 1e9


def _on_host(executable, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in executable(x)]


def callpath(rounds: int, block: float) -> None:
    from zoo_throughput import digits_peers

    from aivm_jax.models import DIGITS_RECIPES, PIXEL_SCALE, load_digits_data

    data = load_digits_data()
    header = (
        f"{'model':11s} {'batch':>5s} {'infer us':>9s} {'program us':>10s} {'ort us':>8s} "
        f"{'infer / program':>22s} {'infer / program host':>22s} {'infer vs ort':>22s}"
    )
    print(header)
    print("-" * len(header))
    for name, recipe in DIGITS_RECIPES.items():
        program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
        _, _, session = digits_peers(recipe, data)
        entry = _compiled_for(program)
        for batch in (1, 64):
            x = np.resize(data.x_test, (batch, 64)).reshape((batch, *recipe.input_shape)).astype(np.int8)
            x_float = (x * PIXEL_SCALE).astype(np.float32)
            want = infer(program, x, mode="reference").output_hash
            assert infer(program, x).output_hash == want, "infer differs from the reference"
            executable = entry.executable((x.shape,))
            x_device = jax.device_put(x)
            calls = {
                "infer": partial(infer, program, x),
                "program": partial(executable, x_device),
                "host": partial(_on_host, executable, x),
            }
            if session is not None:
                calls["ort"] = partial(session.run, None, {"x": x_float})
            t = timed_rounds(calls, rounds, block)
            ort = fmt(ratio(t["ort"], t["infer"])) if "ort" in t else "n/a"
            ort_us = f"{statistics.median(t['ort']) * 1e6:8.1f}" if "ort" in t else f"{'n/a':>8s}"
            print(
                f"{name:11s} {batch:5d} {statistics.median(t['infer']) * 1e6:9.1f} "
                f"{statistics.median(t['program']) * 1e6:10.1f} {ort_us} "
                f"{fmt(ratio(t['infer'], t['program'])):>22s} {fmt(ratio(t['infer'], t['host'])):>22s} "
                f"{ort:>22s}"
            )


def gemm(rounds: int, block: float, quick: bool) -> None:
    from int8_gemm import SHAPES

    from aivm_jax.quant import int8_matmul

    header = f"{'shape':16s} {'M x K x N':>16s} {'ort GOP/s':>10s} {'aivm GOP/s':>11s} {'aivm vs ort':>22s}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    matmul = jax.jit(int8_matmul)
    for name, m, k, n in SHAPES:
        if quick and name not in QUICK_GEMM:
            continue
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        exact = a.astype(np.int64) @ b.astype(np.int64)
        session = _ort_gemm(m, k, n)
        feeds = {"A": (a.astype(np.int16) + 128).astype(np.uint8), "B": b}
        a_dev, b_dev = jax.device_put(a), jax.device_put(b)
        assert np.array_equal(np.asarray(matmul(a_dev, b_dev)), exact), "int8_matmul is not exact"
        # without VNNI, onnxruntime's u8 x s8 kernel sums pairs in saturating 16 bits (VPMADDUBSW)
        mark = "" if np.array_equal(session.run(None, feeds)[0], exact) else " (ort inexact)"
        t = timed_rounds(
            {"ort": partial(session.run, None, feeds), "aivm": partial(matmul, a_dev, b_dev)}, rounds, block
        )
        ops = 2 * m * k * n / 1e9
        print(
            f"{name:16s} {f'{m}x{k}x{n}':>16s} {ops / statistics.median(t['ort']):10.1f} "
            f"{ops / statistics.median(t['aivm']):11.1f} {fmt(ratio(t['ort'], t['aivm'])):>22s}{mark}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shapes (a few minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure (default 7, quick 3)")
    parser.add_argument("--block", type=float, default=None, help="seconds per block (default 0.1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {SECTIONS}")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    block = args.block or (0.05 if args.quick else 0.1)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        parser.error("the peers need onnxruntime: pip install -e '.[bench]'")
    size = 512 if args.quick else 1024
    print(machine_line())
    print(
        f"engine: {kernel_status()}; rounds {rounds}, blocks of {block} s; ratios: median [lowest-highest round]"
    )
    print(f"probe at start: onnxruntime MatMulInteger {size}^3 {probe(size, rounds):.1f} GOP/s")
    if "callpath" in sections:
        print("\ncall path: aivm_jax.infer vs the compiled program alone and vs onnxruntime QDQ")
        callpath(rounds, block)
    if "gemm" in sections:
        print("\nint8 GEMM: aivm vs onnxruntime MatMulInteger u8 x s8")
        gemm(rounds, block, args.quick)
    if "onnx" in sections:
        from onnx_import import bench as onnx_bench
        from onnx_import import make_cases

        print("\nimported ONNX models: aivm_jax.infer vs onnxruntime float and QDQ on the same file")
        onnx_bench(make_cases(), rounds, block)
    print(f"\nprobe at end: onnxruntime MatMulInteger {size}^3 {probe(size, rounds):.1f} GOP/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
