"""`aivm chain devnet`: the pinned Hardhat 2 node that the set-up installs (``npm ci``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from aivm_jax._errors import ToolchainError

__all__ = ["DEVNET_DIR", "devnet_command", "run_until_interrupted"]

DEVNET_DIR = Path(__file__).parent / "devnet"


def devnet_command(port: int) -> list[str]:
    """The command line that runs Hardhat's node on 127.0.0.1:``port``."""
    node = shutil.which("node")
    hardhat = DEVNET_DIR / "node_modules" / "hardhat" / "internal" / "cli" / "bootstrap.js"
    if node is None:
        raise ToolchainError("the devnet needs Node.js 20 on PATH")
    if not hardhat.exists():
        raise ToolchainError(
            f"Hardhat is not installed; run `npm ci --prefix {DEVNET_DIR}` (scripts/_venv.sh does)"
        )
    return [node, str(hardhat), "node", "--hostname", "127.0.0.1", "--port", str(port)]


def run_until_interrupted(command: list[str], cwd: Path, grace: float = 10.0) -> tuple[int, bool]:
    """Run ``command`` until it exits or this process gets SIGINT/SIGTERM; return (exit code, interrupted).

    A Ctrl-C reaches the child too (same process group) and the child may exit first,
    with its own status; whichever comes first, an interrupted run reports
    ``interrupted=True`` so the caller can stop cleanly. The child gets SIGINT (again),
    then is killed if it is still running ``grace`` seconds later.
    """
    interrupted_at: list[float] = []
    process: subprocess.Popen | None = None

    def on_signal(signum, frame):  # noqa: ARG001 - the signal module's signature
        if not interrupted_at:
            interrupted_at.append(time.monotonic())
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
        process = subprocess.Popen(command, cwd=cwd, env=env)
        if interrupted_at:  # the signal came before the child existed
            process.send_signal(signal.SIGINT)
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if interrupted_at and time.monotonic() - interrupted_at[0] > grace:
                    process.kill()
        return code, bool(interrupted_at)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
