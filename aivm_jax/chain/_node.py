"""The node daemon: stake, watch for requests, run them, commit and reveal in time, survive restarts.

All pending work lives in a JSON state file, written atomically after every
change and *before* every transaction that depends on it (the salt is saved
before the commitment is sent), so a node killed at any point picks up where
it stopped: it re-reads the chain from its last processed block, skips what
is done, and reveals what it committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import AivmError, ModelFileError, TransactionRevertedError
from aivm_jax.chain._network import Network, RequestStatus
from aivm_jax.program import Program, from_bytes
from aivm_jax.runtime import infer, input_hash

__all__ = ["Node", "NodeState"]

log = logging.getLogger("aivm.node")


@dataclasses.dataclass
class NodeState:
    """What the node must not forget: the next block to scan and each request's task."""

    path: Path
    next_block: int = 0
    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> NodeState:
        if path.exists():
            data = json.loads(path.read_text())
            return cls(path, data["next_block"], data["tasks"])
        return cls(path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as handle:
            json.dump({"next_block": self.next_block, "tasks": self.tasks}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


class Node:
    """One AIVM node.

    Args:
      network: the contracts, signing as this node's account.
      models_dir: where fetched programs are kept (``<model_id>.aivm``).
      state_path: the state file (default ``models_dir/node-<address>.json``).
      stake_requests: keep enough free stake for this many simultaneous commitments.
      faulty: report a wrong output hash (for tests of slashing only).
    """

    def __init__(
        self,
        network: Network,
        models_dir: Path,
        state_path: Path | None = None,
        *,
        stake_requests: int = 4,
        faulty: bool = False,
    ) -> None:
        self.network = network
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.address = network.chain.address
        self.state = NodeState.load(Path(state_path or self.models_dir / f"node-{self.address}.json"))
        self.stake_requests = stake_requests
        self.faulty = faulty
        self._programs: dict[str, Program] = {}

    # ---------------------------------------------------------------- lifecycle

    def ensure_stake(self) -> None:
        needed = self.network.bond() * self.stake_requests - self.network.free_stake()
        if needed > 0:
            self.network.stake(needed)
            log.info("%s staked %d wei", self.address, needed)

    def run(self, *, poll: float = 0.5, stop_after: float | None = None) -> None:
        """Poll forever (or for ``stop_after`` seconds), handling every request."""
        self.ensure_stake()
        end = None if stop_after is None else time.monotonic() + stop_after
        log.info("%s watching from block %d", self.address, self.state.next_block)
        while end is None or time.monotonic() < end:
            self.step()
            time.sleep(poll)

    def step(self) -> None:
        """One round: read new requests, then move every open task forward."""
        self._scan()
        for request_id in list(self.state.tasks):
            task = self.state.tasks[request_id]
            if task["phase"] in ("done", "refused", "missed"):
                continue
            try:
                self._advance(int(request_id), task)
            except TransactionRevertedError as error:
                # a block clock a second behind the wall clock makes these transient; retried next round
                level = (
                    logging.DEBUG if error.error_name in ("RevealNotOpen", "TooEarly") else logging.WARNING
                )
                log.log(level, "%s request %s: %s", self.address, request_id, error)
            except AivmError as error:
                log.error("%s request %s: refused: %s", self.address, request_id, error)
                self._set(task, phase="refused", reason=str(error))
        if any(t["phase"] == "done" for t in self.state.tasks.values()) and self.network.withdrawable():
            amount = self.network.withdraw()
            log.info("%s withdrew %d wei", self.address, amount)

    # ---------------------------------------------------------------- internals

    def _set(self, task: dict[str, Any], **changes: Any) -> None:
        task.update(changes)
        self.state.save()

    def _scan(self) -> None:
        w3 = self.network.chain.w3
        latest = w3.eth.block_number
        if latest < self.state.next_block:
            return
        events = self.network.market.events.InferenceRequested().get_logs(
            from_block=self.state.next_block, to_block=latest
        )
        for event in events:
            args = event["args"]
            key = str(args["requestId"])
            if key in self.state.tasks:
                continue
            self.state.tasks[key] = {
                "phase": "new",
                "model_id": "0x" + args["modelId"].hex(),
                "input_hash": "0x" + args["inputHash"].hex(),
                "input_data": args["inputData"].hex(),
                "input_uri": args["inputUri"],
                "commit_deadline": int(args["commitDeadline"]),
                "reveal_deadline": int(args["revealDeadline"]),
            }
            log.info("%s saw request %s for model %s", self.address, key, self.state.tasks[key]["model_id"])
        self.state.next_block = latest + 1
        self.state.save()

    def _advance(self, request_id: int, task: dict[str, Any]) -> None:
        now = self.network.chain.now()
        if task["phase"] == "new":
            if now >= task["commit_deadline"]:
                self._set(task, phase="missed", reason="commit window closed before the node saw it")
                return
            output_hash = self._compute(task)
            # the salt is on disk before the commitment leaves, so a crash cannot lose the reveal
            self._set(task, phase="computed", output_hash=output_hash, salt=os.urandom(32).hex())
        if task["phase"] == "computed":
            salt = bytes.fromhex(task["salt"])
            mine = self.network.market.functions.commitments(request_id, self.address).call()
            if mine != self.network.commitment_for(request_id, task["output_hash"], salt):
                if now >= task["commit_deadline"]:
                    self._set(task, phase="missed", reason="commit window closed")
                    return
                self.network.commit(request_id, task["output_hash"], salt)
            self._set(task, phase="committed")
            log.info("%s committed to request %d", self.address, request_id)
        if task["phase"] == "committed" and now >= task["commit_deadline"]:
            status = self.network.request_info(request_id)
            revealed = self.network.market.functions.revealed(request_id, self.address).call()
            if status["status"] == "open" and revealed == b"\0" * 32:
                if now >= task["reveal_deadline"]:
                    self._set(task, phase="missed", reason="reveal window closed")
                    return
                self.network.reveal(request_id, task["output_hash"], bytes.fromhex(task["salt"]))
                log.info("%s revealed %s for request %d", self.address, task["output_hash"], request_id)
            self._set(task, phase="revealed")
        if task["phase"] == "revealed":
            info = self.network.request_info(request_id)
            everyone = info["commits"] > 0 and info["reveals"] == info["commits"]
            if info["status"] == "open" and (now >= info["reveal_deadline"] or everyone):
                try:
                    self.network.finalize(request_id)
                except TransactionRevertedError as error:
                    if error.error_name not in ("NotOpen", "TooEarly"):
                        raise
                info = self.network.request_info(request_id)
            if RequestStatus[info["status"].upper()] in (RequestStatus.FINALIZED, RequestStatus.FAILED):
                self._set(task, phase="done", result=info["output_hash"], status=info["status"])
                log.info(
                    "%s request %d %s: %s", self.address, request_id, info["status"], info["output_hash"]
                )

    def _program(self, model_id: str) -> Program:
        if model_id in self._programs:
            return self._programs[model_id]
        path = self.models_dir / f"{model_id}.aivm"
        if not path.exists():
            uri = self.network.model(model_id)["uri"]
            data = _fetch(uri)
            program = from_bytes(data, expected_model_id=model_id, source=uri)  # refuses a wrong program
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            log.info("%s fetched model %s from %s", self.address, model_id, uri)
        program = from_bytes(path.read_bytes(), expected_model_id=model_id, source=str(path))
        self._programs[model_id] = program
        return program

    def _compute(self, task: dict[str, Any]) -> str:
        program = self._program(task["model_id"])
        spec = program.inputs[0]
        if task["input_data"]:
            raw = bytes.fromhex(task["input_data"])
            x = np.frombuffer(raw, dtype=np.dtype(spec.dtype).newbyteorder("<")).astype(spec.dtype)
            x = x.reshape((-1, *spec.shape))
        else:
            x = np.load(_local_path(task["input_uri"]), allow_pickle=False)
        if input_hash(task["model_id"], x.astype(spec.dtype)) != task["input_hash"]:
            raise ModelFileError("the request's input does not match its input hash")
        result = infer(program, x)
        if self.faulty:
            return "0x" + bytes(b ^ 0xFF for b in bytes.fromhex(result.output_hash[2:])).hex()
        return result.output_hash


def _local_path(uri: str) -> Path:
    parsed = urllib.parse.urlparse(uri)
    return Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def _fetch(uri: str) -> bytes:
    """Bytes at ``uri``: ``file://``, a plain path, or ``http(s)://``."""
    parsed = urllib.parse.urlparse(uri)
    try:
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=60) as response:  # noqa: S310 - the registry's URI
                return response.read()
        return _local_path(uri).read_bytes()
    except OSError as error:
        raise ModelFileError(f"cannot fetch the program from {uri}: {error}") from None
