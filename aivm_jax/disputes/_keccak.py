"""Keccak-256 (Ethereum's, not NIST SHA3-256): the one hash of every dispute commitment.

`keccak256` is ``eth_utils.keccak``; where the ``sha3`` module (safe-pysha3) imports,
its C Keccak is used instead (about 1 us a call against 7 us), and the two give the
same digests (`tests/disputes/test_merkle.py` holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["keccak256", "keccak256_reference"]


def keccak256_reference(data: bytes) -> bytes:
    """``keccak256(data)`` through ``eth_utils`` (the chain extra): 32 bytes."""
    from eth_utils import keccak

    return keccak(data)


def _fast() -> Callable[[bytes], bytes]:
    try:
        import sha3  # safe-pysha3
    except ImportError:
        try:
            from eth_hash.auto import keccak
        except ImportError:  # pragma: no cover - the chain extra brings eth-hash
            from aivm_jax._errors import CommitmentError

            def missing(data: bytes) -> bytes:
                raise CommitmentError(
                    "dispute commitments need Keccak-256: install the chain extra "
                    "(pip install 'aivm_jax[chain]')"
                )

            return missing
        return keccak
    new = sha3.keccak_256
    return lambda data: new(data).digest()


keccak256: Callable[[bytes], bytes] = _fast()
"""``keccak256(data: bytes) -> bytes`` (32 bytes), the fastest Keccak-256 importable here."""
