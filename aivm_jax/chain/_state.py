"""`NodeState`: the node's state file, keyed by chain id, market and node account.

What a node must not forget (each request's task, the salt of every commitment,
the next block to scan) lives in one JSON file. It is written atomically (a
temporary file, fsync, rename) after every change and *before* every
transaction that depends on it. The file records whose state it is (chain id,
market address, node address), both inside and in its default name, so a
redeployed market or another chain never inherits the commitments of the old
one.

A damaged file must neither crash the node nor silently lose salts: before each
save, the current file is kept as ``<name>.prev``; at load, a file that does
not parse (or has the wrong structure) is moved aside to
``<name>.corrupt-<time>`` and the previous copy is used, with an error in the
log either way; only when neither is readable does the node start afresh (and
says so, loudly).

Finished tasks drop their inline input at once and are forgotten after the
policy's retention.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from aivm_jax._errors import StateFileError

__all__ = ["FINISHED", "NodeState", "StateKey", "default_state_path"]

log = logging.getLogger("aivm.node")

FORMAT = 1
FINISHED = frozenset({"done", "refused", "missed", "skipped"})


@dataclasses.dataclass(frozen=True)
class StateKey:
    """Whose state a file holds: the chain, the market contract and the node's account."""

    chain_id: int
    market: str
    node: str

    def as_json(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "market": self.market.lower(), "node": self.node.lower()}


def default_state_path(directory: Path, key: StateKey) -> Path:
    """``directory/node-<chain id>-<market>-<node>.json``."""
    return Path(directory) / f"node-{key.chain_id}-{key.market.lower()}-{key.node.lower()}.json"


@dataclasses.dataclass
class NodeState:
    """What the node must not forget: the next block to scan and each request's task.

    ``next_block`` is None until the first scan (which then starts at the market's
    deployment block). ``tasks`` maps a request id (decimal text) to its task: a dict
    with at least ``phase``.
    """

    path: Path
    key: StateKey | None = None
    next_block: int | None = None
    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def previous_path(self) -> Path:
        return self.path.with_name(self.path.name + ".prev")

    @classmethod
    def load(cls, path: Path, key: StateKey | None = None) -> NodeState:
        """Read ``path`` (or its previous copy, if it is damaged); a fresh state if neither exists.

        Raises:
          StateFileError: the file belongs to another chain, market or node.
        """
        path = Path(path)
        state = cls(path, key)
        damaged = []
        for candidate in (path, state.previous_path):
            if not candidate.exists():
                continue
            try:
                data = _parse(candidate.read_bytes())
            except (OSError, ValueError) as error:
                aside = candidate.with_name(f"{candidate.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                shutil.move(candidate, aside)
                damaged.append(aside)
                log.error(
                    "state file %s is damaged (%s); moved it to %s and trying the previous copy",
                    candidate,
                    error,
                    aside,
                )
                continue
            _check_key(candidate, data.get("key"), key)
            if candidate != path:
                log.error("using the previous copy %s of the damaged state file %s", candidate, path)
            state.next_block = data["next_block"]
            state.tasks = data["tasks"]
            return state
        if damaged:
            log.critical(
                "no readable state file for %s: starting afresh; salts of open commitments in the "
                "damaged copies (%s) are lost unless recovered by hand",
                path,
                ", ".join(map(str, damaged)),
            )
        return state

    def save(self) -> None:
        """Write the state atomically, keeping the current file as the previous copy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        document = {
            "format": FORMAT,
            "key": None if self.key is None else self.key.as_json(),
            "next_block": self.next_block,
            "tasks": self.tasks,
        }
        with open(tmp, "w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        if self.path.exists():
            keep = self.path.with_name(f".{self.path.name}.prev.tmp")
            keep.unlink(missing_ok=True)
            try:
                os.link(self.path, keep)  # the current file stays in place until the rename below
            except OSError:
                shutil.copyfile(self.path, keep)
            os.replace(keep, self.previous_path)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def prune(self, retention: float, now: float | None = None) -> bool:
        """Forget inline inputs of tasks past computing, and finished tasks older than ``retention`` s.

        Returns whether anything changed (the caller saves). Tasks that finished before
        ``finished_at`` was recorded count from now.
        """
        now = time.time() if now is None else now
        changed = False
        for request_id, task in list(self.tasks.items()):
            if task.get("phase") != "new" and task.get("input_data"):
                task["input_data"] = ""
                changed = True
            if task.get("phase") in FINISHED:
                if "finished_at" not in task:
                    task["finished_at"] = now
                    changed = True
                if now - task["finished_at"] >= retention:
                    del self.tasks[request_id]
                    changed = True
        return changed


def _parse(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError("not a node state document (no tasks)")
    next_block = data.get("next_block")
    if next_block is not None and (not isinstance(next_block, int) or next_block < 0):
        raise ValueError(f"next_block is {next_block!r}")
    for request_id, task in data["tasks"].items():
        if not request_id.isdigit() or not isinstance(task, dict) or not isinstance(task.get("phase"), str):
            raise ValueError(f"task {request_id!r} is malformed")
    return {"key": data.get("key"), "next_block": next_block, "tasks": data["tasks"]}


def _check_key(path: Path, found: dict[str, Any] | None, key: StateKey | None) -> None:
    if key is None:
        return
    if found != key.as_json():
        raise StateFileError(
            f"state file {path} belongs to {found or 'an unkeyed (older) node'}, not to chain "
            f"{key.chain_id}, market {key.market}, node {key.node}; give another state file "
            "(or none: the default is named after all three)"
        )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
