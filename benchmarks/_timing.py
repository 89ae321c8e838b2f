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


def _timed_calls(fn, args, min_calls: int, min_seconds: float) -> list[float]:
    """Wall times of ``fn(*args)`` (results blocked on): ``min_calls`` calls, or more until they add
    up to ``min_seconds``. A running total, since summing the list between calls would leave a
    longer and longer idle gap before the next one."""
    times: list[float] = []
    total = 0.0
    while len(times) < min_calls or total < min_seconds:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        total += times[-1]
    return times


def median_seconds(repeats: int, fn, *args, warmup: int = 3, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn(*args)`` (results blocked on) after ``warmup`` untimed calls:
    ``repeats`` calls, or more until they add up to ``min_seconds`` (short calls are noisy)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    return statistics.median(_timed_calls(fn, args, repeats, min_seconds))


def interleaved_medians(
    calls: dict, rounds: int = 5, block_seconds: float = 0.1, rest_seconds: float = 0.02
) -> dict:
    """Median wall time of each of several calls, timed in turns: ``calls`` maps a name to
    ``(fn, args)``. Each of ``rounds`` rounds times a block of at least ``block_seconds`` of
    every call, one after the other, after a ``rest_seconds`` pause (so one engine's spinning
    worker threads have gone quiet before the next starts); the median runs over every call of
    every round. Taking turns spreads this machine's drift over all engines alike instead of
    charging it to whichever was timed when the machine was busy."""
    for fn, args in calls.values():
        for _ in range(3):
            jax.block_until_ready(fn(*args))
    times: dict = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, args) in calls.items():
            time.sleep(rest_seconds)
            times[name] += _timed_calls(fn, args, 1, block_seconds)
    return {name: statistics.median(values) for name, values in times.items()}
