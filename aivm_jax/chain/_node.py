"""The node daemon: stake, watch for requests, run them, commit and reveal in time, survive restarts.

All pending work lives in a state file (`NodeState`), written atomically after
every change and *before* every transaction that depends on it (the salt is
saved before the commitment is sent), so a node killed at any point picks up
where it stopped: it re-reads the chain from its last processed block, skips
what is done, and reveals what it committed.

The main loop (`step`) only talks to the chain: it scans new requests in
bounded block ranges, checks each against the node's `NodePolicy`, and
commits, reveals and finalizes. Work that can take long (fetching a program,
fetching an input, running inference) runs on worker threads, so that one
request's slow download or inference never makes the node miss another's
deadline; results land in the state file when the loop collects them.

Every per-request failure (a malformed input, a missing or forbidden file, a
program that does not match its id, a fetch over its size or time, inference
refused by the resource budget) is caught for that request alone, logged, and
recorded as phase ``refused`` with its reason; requests outside the policy are
``skipped`` with theirs. Neither is retried, so a restart cannot re-crash on
them. A chain that does not answer makes `step` raise `ChainConnectionError`;
`run` retries with exponential backoff and never stops on it.

Phases: ``new`` -> ``computed`` -> ``committed`` -> ``revealed`` -> ``done``;
or ``skipped``, ``refused``, ``missed`` (a window closed first).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aivm_jax._errors import (
    ChainError,
    InputFileError,
    InputShapeError,
    ModelFileError,
    ResourceLimitError,
    TransactionRevertedError,
    TransactionTimeoutError,
    UntrustedVerifierError,
    UriPolicyError,
)
from aivm_jax.chain._connect import chain_error, is_transport_error
from aivm_jax.chain._fetch import fetch_bytes, fetch_program, local_path
from aivm_jax.chain._inputs import batch_from_inline, batch_from_npy
from aivm_jax.chain._network import Network, RequestStatus
from aivm_jax.chain._policy import DEFAULT_POLICY, NodePolicy
from aivm_jax.chain._state import FINISHED, NodeState, StateKey, default_state_path
from aivm_jax.program import Program, from_bytes
from aivm_jax.runtime import check_resources, infer, input_hash

__all__ = ["DEFAULT_LOOKBACK", "DEFAULT_SCAN_BLOCKS", "Node", "NodeState"]

log = logging.getLogger("aivm.node")

DEFAULT_SCAN_BLOCKS = 2_000  # blocks per eth_getLogs: most providers refuse larger ranges
DEFAULT_LOOKBACK = 10_000  # first scan without a known deployment block: this many blocks back
SCAN_RANGES_PER_STEP = 10  # a node far behind catches up over several steps, between its deadlines
MODEL_RETRY_AFTER = 600.0  # seconds before a program that failed to load is fetched again
# reverts that a block clock a second behind the wall clock makes transient; retried next round
_TRANSIENT_REVERTS = frozenset({"RevealNotOpen", "TooEarly"})
_ZERO32 = b"\0" * 32


class _Refusal(Exception):
    """A request this node will not serve (its reason is the message)."""


class Node:
    """One AIVM node.

    Args:
      network: the contracts, signing as this node's account.
      models_dir: where fetched programs are kept (``<model_id>.aivm``).
      state_path: the state file (default ``models_dir/node-<chain id>-<market>-<address>.json``).
      policy: which requests to serve and the limits on their work (`NodePolicy`).
      stake_requests: keep enough free stake for this many simultaneous commitments.
      fetch_workers: threads fetching programs (each fetch is bounded by the policy's time).
      scan_blocks: most blocks per log query.
      lookback: where the first scan starts when the market's deployment block is not
        known: this many blocks before the latest.
      faulty: report a wrong output hash (for tests of slashing only).

    Raises:
      StateFileError: ``state_path`` belongs to another chain, market or node.
      ChainConnectionError: the chain does not answer.
    """

    def __init__(
        self,
        network: Network,
        models_dir: Path,
        state_path: Path | None = None,
        *,
        policy: NodePolicy = DEFAULT_POLICY,
        stake_requests: int = 4,
        fetch_workers: int = 2,
        scan_blocks: int = DEFAULT_SCAN_BLOCKS,
        lookback: int = DEFAULT_LOOKBACK,
        faulty: bool = False,
    ) -> None:
        if scan_blocks < 1 or lookback < 0 or fetch_workers < 1:
            raise ValueError("scan_blocks and fetch_workers must be >= 1, lookback >= 0")
        self.network = network
        self.policy = policy
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.address = network.chain.address
        try:
            chain_id = network.chain.chain_id
        except Exception as error:  # noqa: BLE001 - sorted into typed errors
            raise chain_error(error, "reading the chain id") from None
        key = StateKey(chain_id, network.market_address, self.address)
        default = default_state_path(self.models_dir, key)
        self.state = NodeState.load(Path(state_path or default), key)
        legacy = self.models_dir / f"node-{self.address}.json"
        if state_path is None and legacy.exists():
            log.warning(
                "%s: %s is an older state file with no chain or market in it; it is not used "
                "(state now lives in %s)",
                self.address,
                legacy,
                default,
            )
        self.stake_requests = stake_requests
        self.scan_blocks = scan_blocks
        self.lookback = lookback
        self.faulty = faulty
        self.failures = 0  # rounds of `run` that raised (the chain down, say)
        self._stop = threading.Event()
        self._fetch_pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="aivm-fetch")
        self._work_pool = ThreadPoolExecutor(1, thread_name_prefix="aivm-infer")
        self._programs: dict[str, Program] = {}
        self._loading: dict[str, Future[Program]] = {}
        self._bad_models: dict[str, tuple[str, float]] = {}
        self._jobs: dict[str, Future[str]] = {}
        self._admitted: set[str] = set()  # requests that passed the policy, waiting for their program
        self._proof_window: int | None = None
        self._need_stake = True

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Abandon fetches in flight and stop the worker threads (the state file is already saved)."""
        self._stop.set()
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._work_pool.shutdown(wait=False, cancel_futures=True)

    def ensure_stake(self) -> None:
        needed = self.network.bond() * self.stake_requests - self.network.free_stake()
        if needed > 0:
            self.network.stake(needed)
            log.info("%s staked %d wei", self.address, needed)
        self._need_stake = False

    def run(
        self,
        *,
        poll: float = 0.5,
        stop_after: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        """Poll forever (or for ``stop_after`` seconds), handling every request.

        A round that fails (the chain does not answer, say) is retried after ``backoff``
        seconds, doubling up to ``max_backoff`` while failures continue; the daemon never
        stops on them.
        """
        end = None if stop_after is None else time.monotonic() + stop_after
        log.info("%s watching market %s", self.address, self.network.market_address)
        delay = 0.0
        while end is None or time.monotonic() < end:
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - the daemon outlives every round's failure
                self.failures += 1
                delay = backoff if delay == 0 else min(max_backoff, delay * 2)
                if is_transport_error(error) or isinstance(error, ChainError):
                    log.warning("%s: %s; retrying in %.1f s", self.address, error, delay)
                else:
                    log.exception("%s: round failed; retrying in %.1f s", self.address, delay)
                wait = delay
            else:
                delay = 0.0
                wait = poll
            time.sleep(wait if end is None else max(0.0, min(wait, end - time.monotonic())))

    def step(self) -> None:
        """One round: read new requests, then move every open task forward.

        Raises:
          ChainConnectionError: the chain did not answer (retry later; nothing is lost).
        """
        try:
            if self._need_stake:
                self.ensure_stake()
            self._scan()
            for request_id in list(self.state.tasks):
                task = self.state.tasks[request_id]
                if task["phase"] not in FINISHED:
                    self._advance_guarded(request_id, task)
            if any(t["phase"] == "done" for t in self.state.tasks.values()) and self.network.withdrawable():
                amount = self.network.withdraw()
                log.info("%s withdrew %d wei", self.address, amount)
            if self.state.prune(self.policy.retention):
                self.state.save()
        except Exception as error:
            if is_transport_error(error):
                raise chain_error(error, "the node's round") from None
            raise

    # ---------------------------------------------------------------- internals

    def _set(self, task: dict[str, Any], **changes: Any) -> None:
        task.update(changes)
        self.state.save()

    def _finish(self, request_id: str, task: dict[str, Any], phase: str, reason: str) -> None:
        self._jobs.pop(request_id, None)
        self._admitted.discard(request_id)
        level = logging.WARNING if phase == "refused" else logging.INFO
        log.log(level, "%s request %s %s: %s", self.address, request_id, phase, reason)
        self._set(task, phase=phase, reason=reason, input_data="", finished_at=time.time())

    def _advance_guarded(self, request_id: str, task: dict[str, Any]) -> None:
        try:
            self._advance(int(request_id), task)
        except TransactionTimeoutError as error:  # re-read next round: the chain says if it landed
            log.warning("%s request %s: %s", self.address, request_id, error)
        except TransactionRevertedError as error:
            if error.error_name == "InsufficientStake":
                self._need_stake = True
            transient = error.error_name in _TRANSIENT_REVERTS
            log.log(
                logging.DEBUG if transient else logging.WARNING,
                "%s request %s: %s",
                self.address,
                request_id,
                error,
            )
            if not transient and task.get("last_error") != str(error):
                self._set(task, last_error=str(error))  # retried until its window closes
        except ChainError as error:
            if is_transport_error(error):
                raise
            log.warning("%s request %s: %s", self.address, request_id, error)
        except Exception as error:
            if is_transport_error(error):
                raise
            log.exception("%s request %s: unexpected failure", self.address, request_id)
            self._finish(request_id, task, "refused", f"{type(error).__name__}: {error}")

    def _scan(self) -> None:
        latest = int(self.network.chain.w3.eth.block_number)
        if self.state.next_block is None:
            deployed = int(getattr(self.network, "deploy_block", 0) or 0)
            self.state.next_block = deployed if deployed > 0 else max(0, latest - self.lookback)
            log.info("%s first scan from block %d", self.address, self.state.next_block)
        event = self.network.market.events.InferenceRequested()
        for _ in range(SCAN_RANGES_PER_STEP):
            start = self.state.next_block
            if start > latest:
                return
            end = min(latest, start + self.scan_blocks - 1)
            for found in event.get_logs(from_block=start, to_block=end):
                self._add_task(found["args"])
            self.state.next_block = end + 1
            self.state.save()

    def _add_task(self, args: Any) -> None:
        key = str(args["requestId"])
        if key in self.state.tasks:
            return
        data = bytes(args["inputData"])
        task = {
            "phase": "new",
            "model_id": "0x" + args["modelId"].hex(),
            "input_hash": "0x" + args["inputHash"].hex(),
            "input_data": data.hex() if len(data) <= self.policy.max_input_bytes else "",
            "input_bytes": len(data),
            "input_uri": args["inputUri"],
            "fee": int(args["fee"]),
            "quorum": int(args["quorum"]),
            "commit_deadline": int(args["commitDeadline"]),
            "reveal_deadline": int(args["revealDeadline"]),
        }
        self.state.tasks[key] = task
        log.info("%s saw request %s for model %s", self.address, key, task["model_id"])

    def _advance(self, request_id: int, task: dict[str, Any]) -> None:
        key = str(request_id)
        now = self.network.chain.now()
        market = self.network.market.functions
        call = self.network.chain.call
        if task["phase"] == "new" and not self._advance_new(key, task, now):
            return
        if task["phase"] == "computed":
            salt = bytes.fromhex(task["salt"])
            mine = bytes(call(market.commitments(request_id, self.address)))
            if mine != self.network.commitment_for(request_id, task["output_hash"], salt):
                if mine != _ZERO32:
                    self._finish(key, task, "refused", "the chain holds another commitment from this node")
                    return
                if now >= task["commit_deadline"]:
                    self._finish(key, task, "missed", "commit window closed")
                    return
                self.network.commit(request_id, task["output_hash"], salt)
            self._set(task, phase="committed")
            log.info("%s committed to request %d", self.address, request_id)
        if task["phase"] == "committed" and now >= task["commit_deadline"]:
            status = self.network.request_info(request_id)
            revealed = bytes(call(market.revealed(request_id, self.address)))
            if status["status"] == "open" and revealed == _ZERO32:
                if now >= task["reveal_deadline"]:
                    self._finish(key, task, "missed", "reveal window closed")
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
                    if error.error_name not in ("NotOpen", "TooEarly", "AwaitingProof"):
                        raise
                info = self.network.request_info(request_id)
            if RequestStatus[info["status"].upper()] in (RequestStatus.FINALIZED, RequestStatus.FAILED):
                self._set(
                    task,
                    phase="done",
                    result=info["output_hash"],
                    status=info["status"],
                    finished_at=time.time(),
                )
                log.info(
                    "%s request %d %s: %s", self.address, request_id, info["status"], info["output_hash"]
                )

    def _advance_new(self, key: str, task: dict[str, Any], now: int) -> bool:
        """Check the policy, start the work, collect its result; True once the output is computed."""
        if now >= task["commit_deadline"]:
            self._finish(key, task, "missed", "commit window closed before the output was computed")
            return False
        job = self._jobs.get(key)
        if job is None:
            if key not in self._admitted:  # once per request and process: it reads the chain
                reason = self._policy_reason(int(key), task, now)
                if reason is not None:
                    self._finish(key, task, "skipped", reason)
                    return False
                self._admitted.add(key)
            try:
                program = self._ready_program(task["model_id"])
            except _Refusal as refusal:
                self._finish(key, task, "refused", str(refusal))
                return False
            if program is not None:
                self._jobs[key] = self._work_pool.submit(self._compute, program, dict(task))
            return False
        if not job.done():
            return False
        del self._jobs[key]
        self._admitted.discard(key)
        try:
            output_hash = job.result()
        except Exception as error:  # noqa: BLE001 - any failure of this request's work refuses it alone
            self._finish(key, task, "refused", _describe(error))
            return False
        # the salt is on disk before the commitment leaves, so a crash cannot lose the reveal
        self._set(task, phase="computed", output_hash=output_hash, salt=os.urandom(32).hex(), input_data="")
        return True

    def _policy_reason(self, request_id: int, task: dict[str, Any], now: int) -> str | None:
        """Why this node does not serve the request, or None if it does."""
        p = self.policy
        commit_left = task["commit_deadline"] - now
        reveal = task["reveal_deadline"] - task["commit_deadline"]
        if task.get("fee", 0) < p.min_fee:
            return f"fee {task.get('fee', 0)} wei is below this node's minimum of {p.min_fee} (--min-fee)"
        if commit_left > p.max_commit_window:
            return f"commit window of {commit_left} s is longer than this node's {p.max_commit_window} s (--max-window)"
        if not p.min_reveal_window <= reveal <= p.max_reveal_window:
            return (
                f"reveal window of {reveal} s is outside this node's {p.min_reveal_window}..{p.max_reveal_window} s "
                "(--min-reveal-window, --max-window)"
            )
        if task.get("input_bytes", 0) > p.max_input_bytes:
            return f"inline input of {task['input_bytes']} bytes is over this node's {p.max_input_bytes} (--max-input-mb)"
        if not task["input_data"]:
            reason = self._input_uri_reason(task.get("input_uri", ""))
            if reason is not None:
                return reason
        info = self.network.request_info(request_id)
        if info["status"] != "open":
            return f"the request is {info['status']}"
        lock = task["reveal_deadline"] - now
        if int(info.get("verifier") or "0x0", 16):
            lock += self._proof_seconds()
            try:
                self.network.check_request_verifier(info, self.policy.verifiers)
            except UntrustedVerifierError as error:
                return str(error)
        if lock > p.max_lock:
            return f"a bond would stay locked {lock} s, longer than this node's {p.max_lock} s (--max-lock)"
        return None

    def _input_uri_reason(self, uri: str) -> str | None:
        if not uri:
            return "the request has neither an inline input nor an input URI"
        try:
            path = local_path(uri)
        except UriPolicyError as error:
            return str(error)
        if path is None:
            scheme = uri.split(":", 1)[0].lower()
            if scheme not in self.policy.input_schemes:
                return f"input URI scheme {scheme!r} is not fetched by this node (allowed: {sorted(self.policy.input_schemes)})"
        elif self.policy.input_dir is None:
            return f"input URI {uri!r} is a local path; this node reads local inputs only inside --input-dir"
        return None

    def _proof_seconds(self) -> int:
        if self._proof_window is None:
            self._proof_window = int(self.network.chain.call(self.network.market.functions.proofWindow()))
        return self._proof_window

    # ---------------------------------------------------------------- work (on worker threads)

    def _ready_program(self, model_id: str) -> Program | None:
        """The program, once fetched and checked; None while it loads. Main thread only."""
        if model_id in self._programs:
            return self._programs[model_id]
        failed = self._bad_models.get(model_id)
        if failed is not None and time.monotonic() - failed[1] < MODEL_RETRY_AFTER:
            raise _Refusal(failed[0])
        loading = self._loading.get(model_id)
        if loading is None:
            record = self.network.model(model_id)  # chain reads stay on the main thread
            self._loading[model_id] = self._fetch_pool.submit(self._load_program, model_id, record)
            return None
        if not loading.done():
            return None
        del self._loading[model_id]
        try:
            program = loading.result()
        except Exception as error:  # noqa: BLE001 - every request for this model is refused with it
            reason = _describe(error)
            self._bad_models[model_id] = (reason, time.monotonic())
            raise _Refusal(reason) from None
        self._programs[model_id] = program
        return program

    def _load_program(self, model_id: str, record: dict[str, Any]) -> Program:
        path = self.models_dir / f"{model_id}.aivm"
        if not path.exists():
            registered = int(record.get("size") or 0)
            cap = self.policy.max_model_bytes
            if registered > cap:
                raise ResourceLimitError(
                    f"model {model_id} is registered at {registered} bytes, over this node's limit of "
                    f"{cap} (--max-model-mb)"
                )
            fetch_program(
                record["uri"],
                model_id,
                path,
                max_bytes=registered or cap,
                timeout=self.policy.download_timeout,
                schemes=self.policy.model_schemes,
                local=self.policy.local_models,
                stop=self._stop,
            )
            log.info("%s fetched model %s from %s", self.address, model_id, record["uri"])
        try:
            program = from_bytes(path.read_bytes(), expected_model_id=model_id, source=str(path))
        except ModelFileError:
            path.unlink(missing_ok=True)  # fetched again next time
            raise
        self.network.check_registration(program, record)
        return program

    def _compute(self, program: Program, task: dict[str, Any]) -> str:
        if len(program.inputs) != 1:
            raise InputShapeError(
                f"model {program.model_id} takes {len(program.inputs)} inputs; nodes serve one"
            )
        spec = program.inputs[0]
        if task["input_data"]:
            x = batch_from_inline(bytes.fromhex(task["input_data"]), spec)
        else:
            raw = fetch_bytes(
                task["input_uri"],
                max_bytes=self.policy.max_input_bytes,
                timeout=self.policy.download_timeout,
                schemes=self.policy.input_schemes,
                local=self.policy.input_dir is not None,
                root=self.policy.input_dir,
                stop=self._stop,
            )
            x = batch_from_npy(raw, spec)
        if input_hash(task["model_id"], x) != task["input_hash"]:
            raise InputFileError("the request's input does not match its input hash")
        _check_budget(program, len(x), self.policy)
        result = infer(program, x)
        if self.faulty:
            return "0x" + bytes(b ^ 0xFF for b in bytes.fromhex(result.output_hash[2:])).hex()
        return result.output_hash


def _check_budget(program: Program, rows: int, policy: NodePolicy) -> None:
    """Refuse a request over the node's memory or work budget, by the program's static estimate."""
    check_resources(program, rows, max_bytes=policy.max_infer_bytes, max_work=policy.max_work)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if type(error).__module__.startswith("aivm_jax") else f"{type(error).__name__}: {text}"
