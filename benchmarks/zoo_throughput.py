"""Integer AIVM inference vs the same float model in JAX and vs onnxruntime running it quantized (QDQ int8).

    .venv/bin/python benchmarks/zoo_throughput.py [--rounds N]

Every contender runs in this process on the same inputs, after warm-up; the
contenders take turns, N rounds of at least 0.1 s of calls each, and each
figure is the median over all its calls (`_timing.interleaved_medians`, as in
`int8_gemm.py`). "aivm jit" is the compiled integer program alone, called
as `infer` calls it (small programs carry their parameters as compiled
constants); "aivm infer" is the full `aivm_jax.infer` call (input checks, transfer, per-row
hashes). "ort qdq" is onnxruntime 1.31 on the float ONNX of the same recipe
after `quantize_static` (QDQ, int8 per-channel weights, int8 activations,
calibrated on 256 training images); it needs the benchmark extra
(`pip install -e '.[bench]'`). Ratios are AIVM speed / peer speed (> 1: the AIVM is faster).
"""

from __future__ import annotations

import argparse
import resource

import jax
import numpy as np
from _ort_qdq import qdq_session
from _timing import interleaved_medians, machine_line

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.models import (
    DIGITS_RECIPES,
    PIXEL_SCALE,
    SequentialNet,
    build,
    load_digits_data,
    train_float_model,
)
from aivm_jax.ops._vnni import kernel_status
from aivm_jax.runtime import infer
from aivm_jax.runtime._infer import _compiled_for


def _ort_qdq_session(recipe, params, calibration: np.ndarray):
    """onnxruntime session of the recipe's float model quantized to QDQ int8; None without onnxruntime."""
    try:
        import onnx
    except ImportError:
        return None
    from _float_onnx import float_onnx

    def write(path):
        model = onnx.load_from_string(float_onnx(recipe.layers, params, recipe.input_shape, batch="batch"))
        model.ir_version = 8  # what onnxruntime 1.31 reads
        onnx.save(model, path)

    return qdq_session(write, [{"x": calibration[i : i + 1]} for i in range(len(calibration))])


def digits_peers(recipe, data):
    """The peers of a digits recipe: ``(params, float_fn, session)``, the float Flax model's
    trained parameters, its jitted apply ``float_fn(params, x)`` (float32 in, logits out), and
    onnxruntime's QDQ int8 session calibrated on 256 training images (None without onnxruntime)."""
    params = train_float_model(recipe)
    net = SequentialNet(layers=recipe.layers)
    float_fn = jax.jit(lambda p, x: net.apply({"params": p}, x))
    calibration = (data.x_train[:256] * PIXEL_SCALE).astype(np.float32).reshape((-1, *recipe.input_shape))
    return params, float_fn, _ort_qdq_session(recipe, params, calibration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = load_digits_data()
    print(machine_line())
    print(f"engine: {kernel_status()}")
    header = (
        f"{'model':12s} {'batch':>5s} {'float jax':>11s} {'ort qdq':>11s} {'aivm jit':>11s} {'vs jax':>7s} "
        f"{'vs ort':>7s} {'aivm infer':>11s} {'vs jax':>7s} {'vs ort':>7s}"
    )
    print("examples per second")
    print(header)
    print("-" * len(header))
    for name, recipe in DIGITS_RECIPES.items():
        params, float_fn, session = digits_peers(recipe, data)
        program = build(name)
        entry = _compiled_for(program)
        for batch in (1, 256):
            x_int = np.resize(data.x_test, (batch, 64)).reshape((batch, *recipe.input_shape))
            x_host = (x_int * PIXEL_SCALE).astype(np.float32)
            x_float = jax.device_put(x_host)
            x_dev = {"x": jax.device_put(x_int)}
            calls = {
                "jax": (float_fn, (params, x_float)),
                "jit": (entry.run_local, (x_dev,)),
                "infer": (infer, (program, x_int)),
            }
            if session is not None:
                calls["ort"] = (session.run, (None, {"x": x_host}))
            rate = {
                engine: batch / seconds for engine, seconds in interleaved_medians(calls, args.rounds).items()
            }
            ort_rate = rate.get("ort", float("nan"))
            print(
                f"{name:12s} {batch:5d} {rate['jax']:11,.0f} {ort_rate:11,.0f} {rate['jit']:11,.0f} "
                f"{rate['jit'] / rate['jax']:6.2f}x {rate['jit'] / ort_rate:6.2f}x {rate['infer']:11,.0f} "
                f"{rate['infer'] / rate['jax']:6.2f}x {rate['infer'] / ort_rate:6.2f}x"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB (every contender, both models)")
    if session is None:
        print("onnxruntime not installed: pip install -e '.[bench]' to compare with it")


if __name__ == "__main__":
    main()
