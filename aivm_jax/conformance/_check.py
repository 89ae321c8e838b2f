"""`run_conformance`: does this machine compute the AIVM exactly, on each of its backends?"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from aivm_jax.conformance._vectors import DATA_DIR, load_op_cases
from aivm_jax.ops import OPSET, OPSET_VERSION
from aivm_jax.program import load
from aivm_jax.runtime import determinism_report, infer

__all__ = ["run_conformance"]


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def run_conformance(progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every golden op case and zoo model on the NumPy reference and on each local backend.

    Returns a JSON-able report; ``report["conformant"]`` is true only if every
    check on every backend matched its golden value bit for bit.
    """
    cases = load_op_cases()
    models = json.loads((DATA_DIR / "models.json").read_text())
    platforms: dict[str, Any] = {}
    for device in jax.local_devices():
        platforms.setdefault(device.platform, device)
    targets: dict[str, Any] = {"numpy-reference": None, **platforms}
    backends = {}
    for target, device in targets.items():
        failures = []
        for i, (op, attrs, operands, expected) in enumerate(cases):
            if device is None:
                got = OPSET[op].reference(*operands, **attrs)
            else:
                placed = [jax.device_put(o, device) for o in operands]
                got = jax.jit(lambda *xs, op=op, attrs=attrs: OPSET[op].lowering(*xs, **attrs))(*placed)
            if not _same(got, expected):
                failures.append(f"op case {i} ({op})")
        for name, golden in models.items():
            program = load(DATA_DIR / f"{name}.aivm", expected_model_id=golden["model_id"])
            x = np.load(DATA_DIR / f"{name}.inputs.npy")
            if device is None:
                result = infer(program, x, mode="reference")
            else:
                result = infer(program, x, devices=[device])
            if list(result.row_hashes) != golden["row_hashes"] or result.output_hash != golden["output_hash"]:
                failures.append(f"model {name}")
        checks = len(cases) + len(models)
        progress(f"{target}: {checks - len(failures)}/{checks} checks match")
        backends[target] = {"checks": checks, "passed": checks - len(failures), "failures": failures}
    return {
        "conformant": all(not b["failures"] for b in backends.values()),
        "opset": OPSET_VERSION,
        "backends": backends,
        "environment": determinism_report(),
    }
