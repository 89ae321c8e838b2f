"""What every benchmark here shares: the machine line and the median wall time of a call."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    return (
        f"machine: {cpu_name()}, {os.cpu_count()} cores, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}"
    )


def median_seconds(repeats: int, fn, *args, warmup: int = 3, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn(*args)`` (results blocked on) after ``warmup`` untimed calls:
    ``repeats`` calls, or more until they add up to ``min_seconds`` (short calls are noisy)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
