"""The Merkle commitment over a batch's row hashes: what a node posts for a whole job.

``leaf_i = SHA-256(0x00 || row_hash_i)``; ``node = SHA-256(0x01 || left || right)``;
a level with an odd count carries its last node up unchanged. The root of one
row is its leaf. Domain-separated leaves and nodes keep a leaf from being
passed off as an inner node. `merkle_proof` gives the sibling path that shows
one row belongs to a root; `verify_merkle_proof` checks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["merkle_proof", "merkle_root", "verify_merkle_proof"]


def _leaf(row_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(row_hash[2:])).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(row_hashes: Sequence[str]) -> list[list[bytes]]:
    if not row_hashes:
        raise ValueError("a Merkle root needs at least one row hash")
    levels = [[_leaf(h) for h in row_hashes]]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def merkle_root(row_hashes: Sequence[str]) -> str:
    """``0x`` + 64 hex digits over the row hashes in order."""
    return "0x" + _levels(row_hashes)[-1][0].hex()


def merkle_proof(row_hashes: Sequence[str], index: int) -> list[tuple[str, str]]:
    """Sibling path of row ``index``: ``[(side, 0x-hash), ...]`` from the leaf up; side is ``"L"`` or ``"R"``."""
    path = []
    for level in _levels(row_hashes)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(("L" if sibling < index else "R", "0x" + level[sibling].hex()))
        index //= 2
    return path


def verify_merkle_proof(row_hash: str, path: Sequence[tuple[str, str]], root: str) -> bool:
    """Whether ``row_hash`` with sibling ``path`` hashes up to ``root``."""
    node = _leaf(row_hash)
    for side, sibling in path:
        other = bytes.fromhex(sibling[2:])
        node = _node(other, node) if side == "L" else _node(node, other)
    return "0x" + node.hex() == root.lower()
