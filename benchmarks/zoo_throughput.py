"""Integer AIVM inference vs the same float Flax model in JAX, on the digits zoo models.

    .venv/bin/python benchmarks/zoo_throughput.py [--repeats N]

Both sides are jit-compiled once and timed on the same inputs in the same run
(median of N timed calls after warm-up). "aivm jit" is the compiled integer
program alone; "aivm infer" is the full `aivm_jax.infer` call (input checks,
transfer, per-row hashes). Ratios > 1 mean the AIVM is faster than float JAX.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from _timing import machine_line, median_seconds

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.models import (
    DIGITS_RECIPES,
    PIXEL_SCALE,
    SequentialNet,
    build,
    load_digits_data,
    train_float_model,
)
from aivm_jax.runtime import infer
from aivm_jax.runtime._infer import _compiled_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    data = load_digits_data()
    print(machine_line())
    header = f"{'model':12s} {'batch':>5s} {'float jax (ex/s)':>17s} {'aivm jit (ex/s)':>16s} {'ratio':>6s} {'aivm infer (ex/s)':>18s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    for name, recipe in DIGITS_RECIPES.items():
        params = train_float_model(recipe)
        program = build(name)
        net = SequentialNet(layers=recipe.layers)
        float_fn = jax.jit(lambda p, x, net=net: net.apply({"params": p}, x))
        entry = _compiled_for(program)
        device_params = entry.params_on(None)
        for batch in (1, 256):
            x_int = np.resize(data.x_test, (batch, 64)).reshape((batch, *recipe.input_shape))
            x_float = jax.device_put((x_int * PIXEL_SCALE).astype(np.float32))
            x_dev = {"x": jax.device_put(x_int)}
            t_float = median_seconds(args.repeats, float_fn, params, x_float)
            t_jit = median_seconds(args.repeats, entry.fn, device_params, x_dev)
            t_infer = median_seconds(args.repeats, infer, program, x_int)
            print(
                f"{name:12s} {batch:5d} {batch / t_float:17,.0f} {batch / t_jit:16,.0f} {t_float / t_jit:6.2f} "
                f"{batch / t_infer:18,.0f} {t_float / t_infer:6.2f}"
            )


if __name__ == "__main__":
    main()
