"""The CPU kernels' parallel loop (``_native/parallel.h``): every task runs exactly once.

Each thread runs its own contiguous range of tasks and then takes single tasks
from the back of the others' ranges. Helpers come from the library's own team
of threads (one fewer than XLA's pool has), then from XLA's pool. Asking for
more helpers than there are threads queues some of them, so they start late
and their ranges are taken by the others: the path a descheduled helper takes
on a busy machine. Team threads park after a short spin; a loop must wake them,
and loops on several threads at once must each still run every task once.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from aivm_jax.ops._vnni import kernel_status, parallel_for_check
from aivm_jax.quant import int8_matmul

pytestmark = pytest.mark.skipif(
    not kernel_status().startswith("avx512-vnni"), reason=f"CPU kernels not running: {kernel_status()}"
)


@pytest.mark.parametrize("helpers", [0, 1, 2, 3, 7, 16])
@pytest.mark.parametrize("tasks", [1, 2, 3, 5, 32, 33, 64, 1000])
def test_every_task_runs_exactly_once(tasks, helpers):
    rng = np.random.default_rng(tasks * 31 + helpers)
    for work in (np.zeros(tasks), rng.integers(0, 2000, tasks), np.arange(tasks)[::-1] * 20):
        runs, _ = parallel_for_check(work, helpers)
        np.testing.assert_array_equal(runs, np.ones(tasks, np.int32))


def _slow_helper_ranges(helpers: int, tasks: int = 64) -> tuple[np.ndarray, int]:
    """Work for a loop whose caller is through its own range at once while the helpers' tasks are
    slow: ``(work, own)``, the caller's range being the first ``[0, own)`` tasks."""
    own = tasks // (helpers + 1)
    work = np.full(tasks, 20000)
    work[:own] = 0
    return work, own


@pytest.mark.parametrize("helpers", [1, 3, 7])
def test_a_thread_through_its_range_takes_tasks_from_the_others(helpers):
    work, own = _slow_helper_ranges(helpers)
    tasks = work.size
    for _ in range(3):
        runs, by_caller = parallel_for_check(work, helpers)
        np.testing.assert_array_equal(runs, np.ones(tasks, np.int32))
        assert by_caller[:own].all()  # its own range, by itself
        assert by_caller[own:].sum() > 0, by_caller  # some of the others' tasks
        if (os.cpu_count() or 1) > 1:  # and with a second core, not all of them
            assert by_caller[own:].sum() < tasks - own, by_caller
        if helpers == 1:  # the one other range: the caller took a run of tasks from its back
            taken = np.flatnonzero(by_caller[own:])
            np.testing.assert_array_equal(taken, np.arange(tasks - own - taken.size, tasks - own))


def test_a_bad_helper_count_is_refused():
    with pytest.raises(Exception, match="helpers in"):
        parallel_for_check(np.zeros(4), -1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a helper needs a second core to take part")
def test_a_parked_helper_is_woken_by_the_next_loop():
    for _ in range(5):
        time.sleep(0.02)  # far past the team's spin: its threads are parked
        work, own = _slow_helper_ranges(1)
        runs, by_caller = parallel_for_check(work, 1)
        np.testing.assert_array_equal(runs, np.ones(work.size, np.int32))
        assert by_caller[own:].sum() < work.size - own, "no helper took part after an idle pause"


def _run_on_threads(target, args) -> None:
    """target(arg) for each arg, each on its own Python thread, all at once; fails if one hangs."""
    threads = [threading.Thread(target=target, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call did not finish within 120 s"


def test_loops_on_several_threads_at_once_each_run_every_task_once():
    failures: list[str] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(25):
            tasks = int(rng.integers(2, 200))
            helpers = int(rng.integers(1, 4))
            runs, _ = parallel_for_check(rng.integers(0, 3000, tasks), helpers)
            if not (runs == 1).all():
                failures.append(f"seed {seed}: {tasks} tasks, {helpers} helpers: runs {runs.tolist()}")

    _run_on_threads(caller, range(4))
    assert not failures, failures


def test_threaded_products_on_several_threads_at_once_are_exact():
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (300, 700), dtype=np.int8)  # over the kernel's thread split
    bs = [rng.integers(-128, 128, (700, 97), dtype=np.int8) for _ in range(3)]
    expected = [a.astype(np.int64) @ b.astype(np.int64) for b in bs]
    wrong: list[int] = []

    def caller(i: int) -> None:
        for _ in range(10):
            if not np.array_equal(np.asarray(int8_matmul(a, bs[i])), expected[i]):
                wrong.append(i)

    _run_on_threads(caller, range(3))
    assert not wrong, f"wrong products on threads {sorted(set(wrong))}"


def _concurrent_checks(work: np.ndarray, helpers: int, copies: int = 12) -> list[np.ndarray]:
    """`copies` independent parallel_for_checks in one program; ``runs`` of each. With more than 8
    operations whose buffers exceed 512 bytes, XLA's executor runs independent ones at once on its
    intra-op pool, so some loops' callers are XLA's workers and some the calling thread."""
    import jax
    import jax.numpy as jnp

    from aivm_jax.ops._vnni import PARALLEL_CHECK_TARGET_NAME, register_kernel

    assert register_kernel() and work.size * 4 > 512
    out = (jax.ShapeDtypeStruct(work.shape, np.int32),) * 2
    check = jax.ffi.ffi_call(PARALLEL_CHECK_TARGET_NAME, out)

    @jax.jit
    def program(work):
        return [check(work + i, helpers=np.int64(helpers))[0] for i in range(copies)]

    return [np.asarray(runs) for runs in program(jnp.asarray(work, jnp.int32))]


@pytest.mark.parametrize("helpers", [1, 3])
def test_loops_run_at_once_on_xlas_pool_and_the_caller_each_run_every_task_once(helpers):
    rng = np.random.default_rng(helpers)
    for work in (np.zeros(160), rng.integers(0, 5000, 160), np.full(200, 3000)):
        for runs in _concurrent_checks(work, helpers):
            np.testing.assert_array_equal(runs, np.ones(work.size, np.int32))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names are read from /proc")
def test_xlas_pool_threads_have_the_name_the_loop_looks_for():
    # parallel.h tells XLA's intra-op workers by their name; under another name every caller would
    # take the library's own team, slower on programs XLA runs on its pool (never a different bit).
    _concurrent_checks(np.zeros(160), 1)
    names = set()
    for task in os.listdir("/proc/self/task"):
        try:
            names.add(open(f"/proc/self/task/{task}/comm").read().strip())
        except OSError:
            pass
    assert any("XLAEigen" in name for name in names), sorted(names)
