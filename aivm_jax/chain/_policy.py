"""`NodePolicy`: which requests a node serves, and the limits on the work it does for one.

A request names its fee, its windows, its input (inline or a URI) and a model
whose program lives at the URI its owner registered. Any of them can be chosen
to hurt the node: a fee below its cost, a bond locked for a day, a path to
``/etc/passwd`` or a FIFO, a program URI that drips one byte a second or
serves ``/dev/zero``. The policy says what the node accepts; `Node` skips (or
refuses) everything else, with the reason in its state file.

URI policy:

- **inputs** (the requester's URI): only the network schemes in
  ``input_schemes`` (default ``https``), or a path (plain or ``file://``)
  that resolves inside ``input_dir``, when the operator sets one. Never an
  arbitrary local path. A local input must be a regular file (opened without
  blocking: no FIFOs, devices or directories) of at most ``max_input_bytes``.
- **programs** (the model owner's registered URI): the network schemes in
  ``model_schemes`` (default ``http``, ``https``), and local paths when
  ``local_models`` is set (the default: a node checks the bytes against the
  model id before it keeps or parses them, and never publishes them, so
  reading a wrong local file leaks nothing; it must be a regular file of at
  most the registered size and ``max_model_bytes``).

Every fetch is bounded by ``download_timeout`` seconds in all (connection,
headers, body) and by its byte cap, and streams to disk while it hashes.
Network URIs may reach hosts on the node's own network (the registry's and
requesters' URIs are theirs to choose): run the node where that is harmless,
or narrow the schemes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["DEFAULT_POLICY", "NodePolicy"]

MiB = 1 << 20
_NETWORK_SCHEMES = frozenset({"http", "https"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodePolicy:
    """What a node accepts, and the limits on one request's work.

    Invariants (checked when built): every bound is positive (``min_fee`` and
    ``min_reveal_window`` may be 0); ``min_reveal_window <= max_reveal_window``;
    schemes are among ``http``/``https``; ``input_dir``, when given, is an
    existing directory (kept resolved, so symlinks cannot move it).

    Attributes:
      min_fee: smallest fee (wei) worth serving; lower-fee requests are skipped.
      max_commit_window: longest commit window (s) left at the time the node sees
        the request; its bond would wait that long before the reveal.
      min_reveal_window: shortest reveal window (s): a shorter one risks missing
        the reveal, and a missed reveal is slashed.
      max_reveal_window: longest reveal window (s).
      max_lock: most seconds a bond may stay locked, from now to the reveal
        deadline plus the proof window when the request has a verifier.
      max_input_bytes: largest input (inline or fetched), bytes.
      max_model_bytes: largest program file, bytes (also capped by the size the
        registry records for the model).
      max_infer_bytes: most bytes (peak activations plus parameters) one request may
        need, by the program's static estimate (`aivm_jax.runtime.check_resources`).
      max_work: most work one request may need, by the same estimate (None: no limit).
      download_timeout: seconds one fetch may take in all.
      input_schemes: network schemes accepted for input URIs.
      input_dir: local input files are accepted only inside this directory.
      model_schemes: network schemes accepted for program URIs.
      local_models: accept program URIs that are local paths (``file://`` or plain).
      retention: seconds a finished task stays in the state file.
      verifiers: the verifiers this node generated from programs (`aivm prove verifier`;
        default ``~/.cache/aivm/verifiers.json``). A request made with a proof verifier
        that is not among them is skipped: a dishonest verifier could accept a proof of
        another output and slash this node's honest reveal.
    """

    min_fee: int = 1
    max_commit_window: int = 3_600
    min_reveal_window: int = 10
    max_reveal_window: int = 3_600
    max_lock: int = 4 * 3_600
    max_input_bytes: int = 16 * MiB
    max_model_bytes: int = 512 * MiB
    max_infer_bytes: int = 8 * 1024 * MiB
    max_work: int | None = None
    download_timeout: float = 300.0
    input_schemes: frozenset[str] = frozenset({"https"})
    input_dir: Path | None = None
    model_schemes: frozenset[str] = _NETWORK_SCHEMES
    local_models: bool = True
    retention: float = 7 * 86_400.0
    verifiers: Path | None = None

    def __post_init__(self) -> None:
        for name in ("min_fee", "min_reveal_window"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"NodePolicy.{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "max_commit_window",
            "max_reveal_window",
            "max_lock",
            "max_input_bytes",
            "max_model_bytes",
            "max_infer_bytes",
            "download_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"NodePolicy.{name} must be > 0, got {getattr(self, name)}")
        if self.max_work is not None and self.max_work <= 0:
            raise ValueError(f"NodePolicy.max_work must be > 0 or None, got {self.max_work}")
        if self.retention < 0:
            raise ValueError(f"NodePolicy.retention must be >= 0, got {self.retention}")
        if self.min_reveal_window > self.max_reveal_window:
            raise ValueError(
                f"NodePolicy.min_reveal_window {self.min_reveal_window} exceeds "
                f"max_reveal_window {self.max_reveal_window}"
            )
        for name in ("input_schemes", "model_schemes"):
            schemes = frozenset(s.lower() for s in getattr(self, name))
            if not schemes <= _NETWORK_SCHEMES:
                raise ValueError(
                    f"NodePolicy.{name} may hold only http and https, got {sorted(schemes)}; "
                    "local files are allowed by input_dir and local_models"
                )
            object.__setattr__(self, name, schemes)
        if self.input_dir is not None:
            resolved = Path(self.input_dir).expanduser().resolve()
            if not resolved.is_dir():
                raise ValueError(f"NodePolicy.input_dir {self.input_dir} is not a directory")
            object.__setattr__(self, "input_dir", resolved)


DEFAULT_POLICY = NodePolicy()
