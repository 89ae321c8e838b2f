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

import numpy as np

from aivm_jax.runtime._hashing import digests_from_hex
from aivm_jax.runtime._sha256 import sha256_many, shared

__all__ = ["merkle_proof", "merkle_root", "merkle_root_of_digests", "verify_merkle_proof"]


LEAF, NODE = b"\x00", b"\x01"  # the domain-separation prefixes


def _leaf(row_hash: str) -> bytes:
    return hashlib.sha256(LEAF + bytes.fromhex(row_hash[2:])).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def _levels(digests: bytes) -> list[bytes]:
    """Every level of the tree over the row digests (32 bytes each, concatenated), leaves
    first, each its nodes concatenated; a level is one `sha256_many` call (one native call
    where it runs)."""
    if not digests:
        raise ValueError("a Merkle root needs at least one row hash")
    rows = np.frombuffer(digests, np.uint8)
    levels = [sha256_many([shared(LEAF), (rows, 32, 32)], len(digests) // 32)[0]]
    while len(levels[-1]) > 32:
        level = levels[-1]
        pairs = len(level) // 64
        up = sha256_many([shared(NODE), (np.frombuffer(level, np.uint8), 64, 64)], pairs)[0]
        levels.append(up + level[64 * pairs :])  # an odd last node goes up unchanged
    return levels


def merkle_root(row_hashes: Sequence[str]) -> str:
    """``0x`` + 64 hex digits over the row hashes in order."""
    return merkle_root_of_digests(digests_from_hex(row_hashes))


def merkle_root_of_digests(digests: bytes) -> str:
    """`merkle_root` of the row hashes given as their 32-byte digests, concatenated."""
    if len(digests) % 32:
        raise ValueError("concatenated row digests must be a multiple of 32 bytes")
    return "0x" + _levels(digests)[-1].hex()


def merkle_proof(row_hashes: Sequence[str], index: int) -> list[tuple[str, str]]:
    """Sibling path of row ``index``: ``[(side, 0x-hash), ...]`` from the leaf up; side is ``"L"`` or ``"R"``."""
    path = []
    for level in _levels(digests_from_hex(row_hashes))[:-1]:
        sibling = index ^ 1
        if sibling < len(level) // 32:
            path.append(
                ("L" if sibling < index else "R", "0x" + level[32 * sibling : 32 * sibling + 32].hex())
            )
        index //= 2
    return path


def verify_merkle_proof(row_hash: str, path: Sequence[tuple[str, str]], root: str) -> bool:
    """Whether ``row_hash`` with sibling ``path`` hashes up to ``root``."""
    node = _leaf(row_hash)
    for side, sibling in path:
        other = bytes.fromhex(sibling[2:])
        node = _node(other, node) if side == "L" else _node(node, other)
    return "0x" + node.hex() == root.lower()
