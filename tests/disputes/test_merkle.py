"""The Merkle conventions of `aivm_jax.disputes` against OpenZeppelin's MerkleProof on py-evm."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import (
    TAGS,
    encode_leaf,
    hash_leaf,
    hash_pair,
    keccak256,
    leaf,
    merkle_proof,
    merkle_root,
    process_proof,
    verify,
)
from aivm_jax.disputes._keccak import keccak256_reference
from aivm_jax.disputes._merkle import merkle_levels

TAG = TAGS["aivm.trace.slice.v1"]


def _payloads(n: int, seed: int = 0) -> list[bytes]:
    return [bytes([(seed + i * 7 + k) % 256 for k in range((i * 13 + seed) % 70)]) for i in range(n)]


def _leaves(payloads: list[bytes], step: int = 3) -> list[bytes]:
    return [leaf(TAG, step, j, p) for j, p in enumerate(payloads)]


def test_fast_keccak_is_eth_utils_keccak():
    for n in [0, 1, 31, 32, 135, 136, 137, 1000]:
        data = bytes(range(256)) * 4
        assert keccak256(data[:n]) == keccak256_reference(data[:n])
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_leaf_is_abi_encode_double_hashed():
    from eth_abi import encode

    payload = b"\x01\x80\xff"
    encoded = encode(["bytes32", "uint256", "uint256", "bytes32"], [TAG, 5, 9, keccak256(payload)])
    assert encode_leaf(TAG, 5, 9, keccak256(payload)) == encoded
    assert leaf(TAG, 5, 9, payload) == keccak256(keccak256(encoded)) == hash_leaf(encoded)


def test_tree_shapes_of_one_two_and_three_leaves():
    a, b, c = _leaves(_payloads(3))
    assert merkle_root([a]) == a and merkle_proof([a], 0) == []
    assert merkle_root([a, b]) == hash_pair(a, b) == hash_pair(b, a)
    # Three leaves: (a, b) pair up, c is carried up unchanged, then the two meet.
    assert merkle_root([a, b, c]) == hash_pair(hash_pair(a, b), c)
    assert merkle_proof([a, b, c], 2) == [hash_pair(a, b)]
    assert merkle_proof([a, b, c], 0) == [b, c]


def test_empty_tree_and_bad_leaves_are_refused():
    with pytest.raises(CommitmentError, match="at least one leaf"):
        merkle_root([])
    with pytest.raises(CommitmentError, match="32-byte"):
        merkle_root([b"short"])
    with pytest.raises(CommitmentError, match="not in a tree of 2"):
        merkle_proof(_leaves(_payloads(2)), 2)


def test_proof_lengths_are_logarithmic():
    for n in [1, 2, 3, 5, 8, 9, 33]:
        leaves = _leaves(_payloads(n))
        levels = merkle_levels(leaves)
        assert len(levels) - 1 == (n - 1).bit_length()
        for i in range(n):
            proof = merkle_proof(leaves, i)
            assert len(proof) <= (n - 1).bit_length()
            assert verify(merkle_root(leaves), leaves[i], proof)


@settings(max_examples=25)
@given(st.one_of(st.sampled_from([1, 2, 3, 5, 7]), st.integers(1, 40)), st.data())
def test_contract_accepts_python_proofs_and_rejects_forged_ones(merkle_check, n, data):
    seed = data.draw(st.integers(0, 255))
    payloads = _payloads(n, seed)
    leaves = _leaves(payloads)
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = merkle_proof(leaves, i)
    fns = merkle_check.functions
    assert fns.leaf(TAG, 3, i, payloads[i]).call() == leaves[i]
    assert fns.processProof(proof, leaves[i]).call() == process_proof(leaves[i], proof) == root
    assert fns.verify(proof, root, leaves[i]).call()
    assert fns.verifyPayload(proof, root, TAG, 3, i, payloads[i]).call()

    # Wrong index: the same payload claimed at another slice, or at another step.
    wrong = (i + data.draw(st.integers(1, n - 1))) % n if n > 1 else 1
    assert not fns.verifyPayload(proof, root, TAG, 3, wrong, payloads[i]).call()
    assert not verify(root, leaf(TAG, 3, wrong, payloads[i]), proof)
    assert not fns.verifyPayload(proof, root, TAG, 4, i, payloads[i]).call()
    # Wrong leaf: one payload byte changed, or another tag.
    forged = bytearray(payloads[i] or b"\0")
    forged[data.draw(st.integers(0, len(forged) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    assert not fns.verifyPayload(proof, root, TAG, 3, i, bytes(forged)).call()
    assert not verify(root, leaf(TAG, 3, i, bytes(forged)), proof)
    assert not fns.verifyPayload(proof, root, TAGS["aivm.param.row.v1"], 3, i, payloads[i]).call()
    # Flipped sibling: one bit of one proof entry.
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        assert not fns.verify(bad, root, leaves[i]).call()
        assert not verify(root, leaves[i], bad)
        # A dropped sibling fails too.
        assert not fns.verify(proof[:-1], root, leaves[i]).call()
    # Another leaf's proof.
    if n > 1:
        other = merkle_proof(leaves, (i + 1) % n)
        if other != proof:
            assert not fns.verify(other, root, leaves[i]).call()
