"""Helpers for the node tests: drive `Node.step` until a request settles, moving the clock."""

from __future__ import annotations

import time

from aivm_jax.chain import Node

FINISHED = ("done", "refused", "missed", "skipped")


def phase(node: Node, request_id: int) -> str | None:
    return node.state.tasks.get(str(request_id), {}).get("phase")


def step_until(nodes: list[Node], predicate, timeout: float = 60, what: str = "the nodes") -> None:
    """Step every node until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {[n.state.tasks for n in nodes]}")
        for node in nodes:
            node.step()
        time.sleep(0.05)


def settle(nodes: list[Node], request_id: int, clock=None, timeout: float = 60) -> list[str | None]:
    """Step every node until each has finished ``request_id``; return their phases.

    With ``clock`` (the test owns the chain's clock), the commit deadline is jumped over
    once every node has committed or finished, so no test waits out a window.
    """
    deadline = time.monotonic() + timeout
    jumped = False
    while True:
        for node in nodes:
            node.step()
        phases = [phase(n, request_id) for n in nodes]
        if all(p in FINISHED for p in phases):
            return phases
        if clock is not None and not jumped and all(p in FINISHED or p == "committed" for p in phases):
            task = next(n.state.tasks[str(request_id)] for n in nodes if phase(n, request_id) == "committed")
            clock.jump_past(task["commit_deadline"])
            jumped = True
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes did not settle request {request_id}: {phases}")
        time.sleep(0.05)
