"""Merkle trees in OpenZeppelin's conventions, so that ``MerkleProof.verify`` checks them on chain.

* **Leaves** are double-hashed as in OpenZeppelin's ``StandardMerkleTree``:
  ``leaf = keccak256(keccak256(abi.encode(...)))`` (`hash_leaf`). A leaf's
  preimage is 32 bytes and an inner node's 64, so no leaf passes for a node.
* **Inner nodes** hash the sorted pair, ``keccak256(min(a, b) || max(a, b))``
  (`hash_pair`, OpenZeppelin's ``Hashes.commutativeKeccak256``), so a proof is
  the list of siblings from the leaf up, with no left/right flags.
* **Shape**: the leaves in the given order form level 0; each level pairs
  nodes ``(0, 1), (2, 3), ...``; an odd last node is **carried up unchanged**
  (no padding, no duplicate), and contributes no sibling to a proof at that
  level. The root of one leaf is that leaf. There is no tree of zero leaves.

A commutative tree does not bind a leaf's position through its path, so every
leaf of the AIVM's trees encodes its own position (step index, slice index; see
``docs/spec/commitments.md``). The leaves are *not* sorted (unlike
``StandardMerkleTree``): their order is the commitment's canonical order.

`verify` needs nothing but Keccak (no JAX, no NumPy). `merkle_levels` hashes every level
in one native call where the batched Keccak loads (`aivm_jax.disputes._keccak`), else in
Python (`merkle_levels_python`); both give the same nodes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import _keccak
from aivm_jax.disputes._keccak import keccak256

__all__ = [
    "hash_leaf",
    "hash_pair",
    "merkle_levels",
    "merkle_levels_python",
    "merkle_proof",
    "merkle_root",
    "process_proof",
    "proof_from_levels",
    "split_levels",
    "tree_nodes",
    "verify",
]


def hash_leaf(encoded: bytes) -> bytes:
    """``keccak256(keccak256(encoded))``: a leaf from its ``abi.encode``-d bytes (32 bytes out)."""
    return keccak256(keccak256(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """``keccak256(min(a, b) || max(a, b))`` of two 32-byte nodes (OpenZeppelin's commutative hash).

    >>> hash_pair(b"\\x01" * 32, b"\\x02" * 32) == hash_pair(b"\\x02" * 32, b"\\x01" * 32)
    True
    """
    return keccak256(a + b if a < b else b + a)


def _checked(leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 0:
        raise CommitmentError("a Merkle tree needs at least one leaf; got none")
    out = [bytes(leaf) for leaf in leaves]
    for i, leaf in enumerate(out):
        if len(leaf) != 32:
            raise CommitmentError(f"leaf {i} is {len(leaf)} bytes; leaves are 32-byte hashes")
    return out


def tree_nodes(n: int) -> int:
    """How many nodes a tree of ``n >= 1`` leaves has over all its levels (leaves included)."""
    total = n
    while n > 1:
        n = (n + 1) // 2
        total += n
    return total


def split_levels(nodes: bytes, n: int, at: int = 0) -> list[list[bytes]]:
    """The levels of a tree of ``n`` leaves from its nodes concatenated level by level
    (``32 * tree_nodes(n)`` bytes from byte ``at``, the leaves first), as `merkle_levels`
    returns them."""
    if n == 1:
        return [[nodes[at : at + 32]]]
    levels = []
    while True:
        levels.append([nodes[k : k + 32] for k in range(at, at + 32 * n, 32)])
        at += 32 * n
        if n == 1:
            return levels
        n = (n + 1) // 2


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, the leaves first and the one-node root level last.

    Raises:
      CommitmentError: no leaves, or a leaf that is not 32 bytes.
    """
    checked = _checked(leaves)
    library = _keccak.native_library()
    if library is None or len(checked) == 1:
        return merkle_levels_python(checked)
    n = len(checked)
    out = ctypes.create_string_buffer(32 * tree_nodes(n))
    library.aivm_merkle_levels(n, b"".join(checked), out)
    return split_levels(out.raw, n)


def merkle_levels_python(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """`merkle_levels` with one Python call per hash (the reference the native path equals)."""
    levels = [_checked(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # an odd last node is carried up unchanged
        levels.append(up)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root (32 bytes) over ``leaves`` (32-byte leaf hashes, in order).

    Raises:
      CommitmentError: no leaves, or a leaf that is not 32 bytes.
    """
    return merkle_levels(leaves)[-1][0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes (32 bytes each) that prove leaf ``index``, from the leaf up: the
    ``bytes32[] proof`` of OpenZeppelin's ``MerkleProof.verify``. Length <= ceil(log2(n)).

    Raises:
      CommitmentError: ``index`` is not a leaf position.
    """
    levels = merkle_levels(leaves)
    if not 0 <= index < len(levels[0]):
        raise CommitmentError(f"leaf index {index} is not in a tree of {len(levels[0])} leaves")
    return proof_from_levels(levels, index)


def proof_from_levels(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """`merkle_proof` from a tree's `merkle_levels` (for many proofs of one tree)."""
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``leaf`` and its sibling ``proof`` hash up to (``MerkleProof.processProof``)."""
    node = bytes(leaf)
    for sibling in proof:
        node = hash_pair(node, bytes(sibling))
    return node


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``leaf`` with ``proof`` hashes up to ``root`` (``MerkleProof.verify``)."""
    return process_proof(leaf, proof) == bytes(root)
