// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {InferenceMarket} from "../InferenceMarket.sol";

/// Test helper: a verifier that accepts every proof (what a dishonest model owner would register).
contract AcceptAllVerifier {
    function verifyProof(bytes calldata, uint256[] calldata) external pure returns (bool) {
        return true;
    }
}

/// Test helper: a verifier that rejects every proof.
contract RejectAllVerifier {
    function verifyProof(bytes calldata, uint256[] calldata) external pure returns (bool) {
        return false;
    }
}

/// Test helper: the reentrancy attack on the zk path. While the market asks it to verify a
/// proof, it submits the same proof again, and a proof for another request (`other`), then
/// accepts. Against a market that calls the verifier before changing state, each level paid
/// the fee again and unlocked the committers' bonds again.
contract ReentrantVerifier {
    InferenceMarket public immutable market;
    uint256 public other;

    constructor(InferenceMarket market_) {
        market = market_;
    }

    function setOther(uint256 requestId) external {
        other = requestId;
    }

    /// Commit to a proof in the market as this contract (the prover whose fee the attack collects).
    function commitProof(uint256 requestId, bytes32 digest) external {
        market.commitProof(requestId, digest);
    }

    function submitProof(uint256 requestId, bytes calldata proof, uint256[] calldata instances) external {
        market.submitProof(requestId, proof, instances, new bytes32[](0));
    }

    function verifyProof(bytes calldata proof, uint256[] calldata instances) external returns (bool) {
        uint256 requestId = market.requestCount(); // any open request will do for the attempt
        try market.submitProof(requestId, proof, instances, new bytes32[](0)) {} catch {}
        if (other != 0) {
            try market.submitProof(other, proof, instances, new bytes32[](0)) {} catch {}
        }
        return true;
    }

    receive() external payable {}
}
