"""The thin layer over the `ezkl` package: quiet logs, typed errors, progress on long calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aivm_jax._errors import ProofError, ToolchainError

__all__ = ["call", "ezkl", "ezkl_version", "step"]

os.environ.setdefault("RUST_LOG", "error")  # EZKL logs every step at info level otherwise


def ezkl():
    """The `ezkl` module; a clear error if the proofs extra is not installed."""
    try:
        import ezkl as module
    except ImportError:
        raise ToolchainError(
            "proofs need the `ezkl` and `onnx` packages: pip install 'aivm_jax[proofs]'"
        ) from None
    return module


def ezkl_version() -> str:
    from importlib.metadata import version

    return version("ezkl")


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``ezkl.<name>``; EZKL errors become `ProofError`.

    Some EZKL functions are coroutines that must be created inside a running
    event loop (``create_evm_verifier``, ``create_evm_vka``); those run in one.
    """
    fn = getattr(ezkl(), name)

    async def in_loop():
        return await fn(*args, **kwargs)

    try:
        if name in _ASYNC:
            return asyncio.run(in_loop())
        return fn(*args, **kwargs)
    except RuntimeError as error:
        raise ProofError(f"ezkl.{name} failed: {error}") from None


_ASYNC = {"create_evm_verifier", "create_evm_vka", "deploy_evm", "verify_evm", "register_vka"}


@contextlib.contextmanager
def step(progress: Callable[[str], None], label: str, every: float = 15.0) -> Iterator[None]:
    """Report ``label``, a heartbeat every ``every`` seconds while it runs, and its duration."""
    start = time.perf_counter()
    done = threading.Event()

    def heartbeat():
        while not done.wait(every):
            progress(f"{label}: still working ({time.perf_counter() - start:.0f} s)")

    progress(f"{label}...")
    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    progress(f"{label}: done in {time.perf_counter() - start:.1f} s")
