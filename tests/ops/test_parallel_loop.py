"""The CPU kernels' parallel loop (``_native/parallel.h``): every task runs exactly once.

Each thread runs its own contiguous range of tasks and then takes single tasks
from the back of the others' ranges. Asking for more helpers than XLA's pool
has threads queues some of them, so they start late and their ranges are
taken by the others: the path a descheduled helper takes on a busy machine.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from aivm_jax.ops._vnni import kernel_status, parallel_for_check

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


@pytest.mark.parametrize("helpers", [1, 3, 7])
def test_a_thread_through_its_range_takes_tasks_from_the_others(helpers):
    tasks = 64
    own = tasks // (helpers + 1)  # the caller's range is the first [0, own)
    work = np.full(tasks, 20000)
    work[:own] = 0  # the caller is through its own range at once; the helpers' tasks are slow
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
