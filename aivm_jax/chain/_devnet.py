"""`aivm chain devnet`: the pinned Hardhat 2 node that the set-up installs (``npm ci``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from aivm_jax._errors import ToolchainError

__all__ = ["DEVNET_DIR", "devnet_command"]

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
