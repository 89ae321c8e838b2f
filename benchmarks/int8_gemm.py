"""The AIVM's exact int8 GEMM (`aivm_jax.quant.int8_matmul`) vs onnxruntime's `MatMulInteger`.

    .venv/bin/python benchmarks/int8_gemm.py [--rounds N]

Same run, same operands, after warm-up: the engines take turns, N rounds of at
least 0.1 s of calls each, and each engine's figure is the median over all its
calls (so this machine's drift is shared by all engines alike). "aivm" is
`int8_matmul` as the runtime runs it (the project's AVX-512 VNNI kernel where
the CPU has it, see the "engine" line); "xla dot" is XLA's own s8 dot, the
engine it replaces, for reference. onnxruntime gets
what its fast kernel wants: uint8 activations (the int8 values + 128, with
zero point 128) times int8 weights. Both results are checked against the
exact int64 product before timing. Shapes: 1024^3, the digits-mlp layers and
the digits-cnn layers (its convolutions as the (pixels, 3 * 3 * C) x (3 * 3 * C,
O) products of their im2col) at batch 256, and the char-gpt and
all-MiniLM-L6-v2 projections at 32 x 128 tokens.
Ratio = AIVM GOP/s / onnxruntime GOP/s (> 1: the AIVM is faster).
Needs the benchmark extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import resource

import jax
import numpy as np
from _timing import interleaved_medians, machine_line

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.ops._gemm import _xla_matmul, kernel_status
from aivm_jax.quant import int8_matmul

SHAPES = [
    ("square", 1024, 1024, 1024),
    ("digits-mlp fc1", 256, 64, 64),
    ("digits-mlp fc2", 256, 64, 32),
    ("digits-mlp fc3", 256, 32, 10),
    ("digits-cnn conv1", 16384, 9, 16),  # its 3x3 convs as the kernel's implicit im2col sees them
    ("digits-cnn conv2", 4096, 144, 32),
    ("digits-cnn fc", 256, 128, 10),
    ("char-gpt qkvo", 4096, 128, 128),  # 32 windows of 128 tokens
    ("char-gpt ffn up", 4096, 128, 512),
    ("char-gpt ffn down", 4096, 512, 128),
    ("char-gpt head", 4096, 128, 94),
    ("minilm qkvo", 4096, 384, 384),
    ("minilm ffn up", 4096, 384, 1536),
    ("minilm ffn down", 4096, 1536, 384),
]


def _ort_session(m: int, k: int, n: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "za"], ["Y"])],
        "gemm",
        [
            helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
            helper.make_tensor_value_info("B", TensorProto.INT8, [k, n]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        initializer=[helper.make_tensor("za", TensorProto.UINT8, [], [128])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime 1.31 reads
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())
    print(f"engine: {kernel_status()}")
    header = (
        f"{'shape':16s} {'M x K x N':>18s} {'onnxruntime GOP/s':>18s} {'xla dot GOP/s':>14s} "
        f"{'aivm GOP/s':>11s} {'ratio':>6s}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    gemm = jax.jit(int8_matmul)
    xla_gemm = jax.jit(_xla_matmul)
    for name, m, k, n in SHAPES:
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        exact = a.astype(np.int64) @ b.astype(np.int64)
        session = _ort_session(m, k, n)
        feeds = {"A": (a.astype(np.int16) + 128).astype(np.uint8), "B": b}
        assert np.array_equal(session.run(None, feeds)[0], exact), "onnxruntime is not exact here"
        a_dev, b_dev = jax.device_put(a), jax.device_put(b)
        assert np.array_equal(np.asarray(gemm(a_dev, b_dev)), exact), "int8_matmul is not exact"
        ops = 2 * m * k * n
        seconds = interleaved_medians(
            {
                "onnxruntime": (session.run, (None, feeds)),
                "xla": (xla_gemm, (a_dev, b_dev)),
                "aivm": (gemm, (a_dev, b_dev)),
            },
            rounds=args.rounds,
        )
        ort_rate, xla_rate, aivm_rate = (ops / seconds[name] / 1e9 for name in ("onnxruntime", "xla", "aivm"))
        print(
            f"{name:16s} {f'{m}x{k}x{n}':>18s} {ort_rate:18.1f} {xla_rate:14.1f} {aivm_rate:11.1f} "
            f"{aivm_rate / ort_rate:5.2f}x"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB (both engines, all shapes)")


if __name__ == "__main__":
    main()
