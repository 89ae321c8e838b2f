// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// Test helper: the dispute commitments' Merkle conventions (aivm_jax.disputes,
/// docs/spec/commitments.md) checked by OpenZeppelin's MerkleProof. A leaf is
/// keccak256(bytes.concat(keccak256(abi.encode(tag, i, j, keccak256(payload))))); inner
/// nodes hash the sorted pair; a proof lists the siblings from the leaf up.
contract MerkleCheck {
    /// The leaf of `payload` at position (i, j) under `tag`.
    function leaf(bytes32 tag, uint256 i, uint256 j, bytes calldata payload) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(tag, i, j, keccak256(payload)))));
    }

    /// OpenZeppelin's MerkleProof.verify on a leaf hash.
    function verify(bytes32[] memory proof, bytes32 root, bytes32 leafHash) external pure returns (bool) {
        return MerkleProof.verify(proof, root, leafHash);
    }

    /// OpenZeppelin's MerkleProof.processProof: the root a leaf and its proof hash up to.
    function processProof(bytes32[] memory proof, bytes32 leafHash) external pure returns (bytes32) {
        return MerkleProof.processProof(proof, leafHash);
    }

    /// Whether `payload` at (i, j) under `tag` is in the tree of `root`: the leaf rebuilt from
    /// its data, as a one-step check will do it.
    function verifyPayload(
        bytes32[] memory proof,
        bytes32 root,
        bytes32 tag,
        uint256 i,
        uint256 j,
        bytes calldata payload
    ) external pure returns (bool) {
        return MerkleProof.verify(proof, root, leaf(tag, i, j, payload));
    }
}
