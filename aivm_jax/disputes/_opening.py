"""`Opening`: one leaf's data and the Merkle proof that puts it under a root."""

from __future__ import annotations

import dataclasses

from aivm_jax.disputes._leaves import leaf
from aivm_jax.disputes._merkle import verify

__all__ = ["Opening"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Opening:
    """What a party sends a contract to show one piece of a commitment: the leaf's ``tag``
    (``bytes32``), position ``(i, j)`` and ``payload`` bytes, and the sibling ``proof``
    (``bytes32[]``, leaf to root). The contract recomputes the leaf from the first four
    (`aivm_jax.disputes.leaf`) and runs ``MerkleProof.verify(proof, root, leaf)``."""

    tag: bytes
    i: int
    j: int
    payload: bytes
    proof: tuple[bytes, ...]

    @property
    def leaf(self) -> bytes:
        """The leaf hash, 32 bytes."""
        return leaf(self.tag, self.i, self.j, self.payload)

    def verify(self, root: bytes) -> bool:
        """Whether this opening is under ``root`` (needs only Keccak)."""
        return verify(root, self.leaf, self.proof)
