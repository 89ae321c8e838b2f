"""Golden vectors: fixed op cases and zoo programs with their expected results.

The vectors ship inside the package (``aivm_jax/conformance/data``) so that any
node can check its machine offline. `write_vectors` regenerates them: op
expectations come from the NumPy reference, model expectations are row hashes
from ``infer(mode="reference")``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax.ops import reference

__all__ = ["DATA_DIR", "OpCase", "load_op_cases", "op_cases", "write_vectors"]

DATA_DIR = Path(__file__).parent / "data"
ZOO_FOR_CONFORMANCE = ("digits-mlp", "digits-cnn")

OpCase = tuple[str, dict[str, Any], list[np.ndarray], np.ndarray]


def _ints(rng, low, high, shape, dtype, edges=()):
    """Random integers in ``[low, high]`` with ``edges`` planted at the start."""
    out = rng.integers(low, high, size=shape, endpoint=True, dtype=np.int64)
    flat = out.reshape(-1)
    for i, v in enumerate(edges[: flat.size]):
        flat[i] = v
    return out.astype(dtype)


def op_cases(seed: int = 20261125) -> Iterator[tuple[str, dict[str, Any], list[np.ndarray]]]:
    """Op cases ``(op, attrs, operands)`` with edge values: -128, 127, ties, int32 limits."""
    rng = np.random.default_rng(seed)
    i8 = (-128, 127, 0, -1, 1)
    i32 = (-(2**31), 2**31 - 1, 0, -1, 1, -3, 3)
    yield (
        "matmul",
        {},
        [_ints(rng, -128, 127, (5, 33), np.int8, i8), _ints(rng, -128, 127, (33, 7), np.int8, i8)],
    )
    big_k = 4096  # all -128 x -128 products: 2**26, exact
    yield "matmul", {}, [np.full((2, big_k), -128, np.int8), np.full((big_k, 3), -128, np.int8)]
    for strides, padding in [((1, 1), ((1, 1), (1, 1))), ((2, 1), ((0, 2), (1, 0)))]:
        yield (
            "conv2d",
            {"strides": strides, "padding": padding},
            [
                _ints(rng, -128, 127, (3, 7, 6, 4), np.int8, i8),
                _ints(rng, -128, 127, (3, 2, 4, 5), np.int8, i8),
            ],
        )
    yield (
        "bias_add",
        {},
        [
            _ints(rng, -(2**31), 2**31 - 1, (4, 7), np.int32, i32),
            _ints(rng, -(2**31), 2**31 - 1, (7,), np.int32, i32),
        ],
    )
    for out_dtype in ("int8", "int32"):
        yield (
            "requantize",
            {"out_dtype": out_dtype},
            [
                _ints(rng, -(2**31), 2**31 - 1, (6, 5), np.int32, i32 + (-5, 5, -6, 6)),
                _ints(rng, -(2**31), 2**31 - 1, (5,), np.int32, (2**31 - 1, -(2**31), 1, 3)),
                _ints(rng, 0, 62, (5,), np.int32, (62, 0, 1, 1, 31)),
            ],
        )
    yield (
        "requantize",
        {"out_dtype": "int8"},
        [  # ties: -5/2, 5/2, -3/2, 3/2
            np.array([[-5, 5, -3, 3, -1, 1, 255, -257]], np.int32),
            np.int32(1).reshape(()),
            np.int32(1).reshape(()),
        ],
    )
    for dtype in ("int8", "int32"):
        info = np.iinfo(dtype)
        yield "relu", {}, [_ints(rng, info.min, info.max, (4, 9), dtype, (info.min, info.max, 0, -1))]
    table = _ints(rng, -128, 127, (256,), np.int8)
    yield "table", {}, [_ints(rng, -128, 127, (3, 40), np.int8, i8), table]
    yield (
        "table",
        {},
        [
            _ints(rng, -128, 127, (2, 3, 4), np.int8, i8),
            _ints(rng, -(2**31), 2**31 - 1, (256,), np.int32, i32),
        ],
    )
    for op in ("max_pool", "avg_pool"):
        yield (
            op,
            {"window": (2, 2), "strides": (2, 2), "padding": ((0, 0), (0, 0))},
            [_ints(rng, -128, 127, (3, 6, 6, 4), np.int8, (-128, -128, -128, -127))],
        )
        yield (
            op,
            {"window": (3, 2), "strides": (1, 2), "padding": ((1, 2), (1, 1))},
            [_ints(rng, -128, 127, (2, 5, 4, 3), np.int8, i8)],
        )
    yield "reshape", {"shape": (3, 8)}, [_ints(rng, -128, 127, (2, 4, 6), np.int8)]
    yield "flatten", {}, [_ints(rng, -128, 127, (2, 3, 4, 5), np.int8)]
    yield "transpose", {"perm": (2, 0, 1)}, [_ints(rng, -128, 127, (2, 3, 4, 5), np.int8)]
    yield (
        "concat",
        {"axis": 1},
        [_ints(rng, -128, 127, (2, 3, 4), np.int8), _ints(rng, -128, 127, (2, 5, 4), np.int8)],
    )
    yield (
        "argmax",
        {"axis": -1},
        [np.array([[3, 7, 7, 1], [-128, -128, -128, -128], [0, 127, -5, 127]], np.int8)],
    )
    yield "argmax", {"axis": 1}, [_ints(rng, -(2**31), 2**31 - 1, (3, 6, 2), np.int32, i32)]
    yield from _transformer_cases(rng, i8, i32)


def _transformer_cases(rng, i8, i32):
    """Cases for the transformer ops (appended last so the earlier cases keep their bytes)."""
    yield "reshape", {"shape": (-1, 2)}, [_ints(rng, -128, 127, (2, 3, 4), np.int8)]
    yield (
        "gather",
        {},
        [_ints(rng, -2, 12, (3, 5), np.int32, (0, 9, -1, 10)), _ints(rng, -128, 127, (10, 4), np.int8, i8)],
    )
    yield "iota", {}, [_ints(rng, -128, 127, (2, 7), np.int8)]
    yield (
        "add",
        {"out_dtype": "int32"},
        [
            _ints(rng, -(2**31), 2**31 - 1, (3, 4), np.int32, i32),
            _ints(rng, -128, 127, (3, 4), np.int8, i8),
            _ints(rng, -(2**30), 2**30, (4,), np.int32, (2**30, -(2**30))),
            np.int32(12345).reshape(()),
            _ints(rng, 0, 62, (4,), np.int32, (62, 0, 1)),
        ],
    )
    yield (
        "layer_norm",
        {"eps": 3},
        [
            _ints(rng, -(2**31), 2**31 - 1, (2, 3, 16), np.int32, i32),
            _ints(rng, -(2**20), 2**20, (16,), np.int32),
            _ints(rng, -(2**20), 2**20, (16,), np.int32),
        ],
    )
    yield (
        "batch_matmul",
        {},
        [_ints(rng, -128, 127, (2, 3, 4, 5), np.int8, i8), _ints(rng, -128, 127, (2, 3, 5, 6), np.int8, i8)],
    )
    yield (
        "batch_matmul",
        {},
        [
            _ints(rng, -(2**31), 2**31 - 1, (2, 2, 3), np.int32, i32),
            _ints(rng, -128, 127, (2, 3, 2), np.int8, i8),
        ],
    )
    table = np.round(2.0**30 * 2.0 ** (-np.arange(256) / 256)).astype(np.int32)
    for causal in (False, True):
        yield (
            "softmax",
            {"causal": causal, "out_bits": 15},
            [
                _ints(rng, -(2**31), 2**31 - 1, (2, 3, 4, 6), np.int32, i32),
                np.array([[1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]], np.int8),
                table,
            ],
        )
    yield (
        "mean_pool",
        {},
        [
            _ints(rng, -(2**31), 2**31 - 1, (2, 5, 3), np.int32, i32),
            np.array([[1, 0, 1, 1, 0], [0] * 5], np.int8),
        ],
    )


def _save_op_cases(path: Path) -> int:
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, (op, attrs, operands) in enumerate(op_cases()):
        expected = getattr(reference, op)(*operands, **attrs)
        for j, operand in enumerate(operands):
            arrays[f"case{i}.operand{j}"] = operand
        arrays[f"case{i}.expected"] = expected
        index.append({"op": op, "attrs": attrs, "operands": len(operands)})
    np.savez(path / "ops.npz", **arrays)
    (path / "ops.json").write_text(json.dumps(index, indent=1) + "\n")
    return len(index)


def load_op_cases(path: Path = DATA_DIR) -> list[OpCase]:
    index = json.loads((path / "ops.json").read_text())
    with np.load(path / "ops.npz") as arrays:
        return [
            (
                case["op"],
                case["attrs"],
                [arrays[f"case{i}.operand{j}"] for j in range(case["operands"])],
                arrays[f"case{i}.expected"],
            )
            for i, case in enumerate(index)
        ]


def zoo_inputs(program) -> np.ndarray:
    """Fixed inputs for a zoo program: 16 held-out test images plus range edges (0 and 16)."""
    from aivm_jax.models import load_digits_data

    data = load_digits_data()
    images = np.concatenate([data.x_test[:16], np.zeros((1, 64), np.int8), np.full((1, 64), 16, np.int8)])
    return images.reshape((-1, *program.inputs[0].shape))


def write_vectors(path: Path = DATA_DIR, progress=print) -> None:
    """Regenerate every golden vector: op cases, zoo programs, inputs and expected hashes."""
    from aivm_jax.models import build
    from aivm_jax.program import save
    from aivm_jax.runtime import infer

    path.mkdir(parents=True, exist_ok=True)
    progress(f"wrote {_save_op_cases(path)} op cases")
    models = {}
    for name in ZOO_FOR_CONFORMANCE:
        program = build(name, progress)
        save(program, path / f"{name}.aivm")
        x = zoo_inputs(program)
        np.save(path / f"{name}.inputs.npy", x)
        result = infer(program, x, mode="reference")
        models[name] = {
            "model_id": program.model_id,
            "output_hash": result.output_hash,
            "row_hashes": list(result.row_hashes),
        }
        progress(f"{name}: {program.model_id}")
    (path / "models.json").write_text(json.dumps(models, indent=1) + "\n")
