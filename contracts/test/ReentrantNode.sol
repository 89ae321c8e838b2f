// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {InferenceMarket} from "../InferenceMarket.sol";

/// Test helper: a node that tries to re-enter `withdraw` from its receive hook.
contract ReentrantNode {
    InferenceMarket public immutable market;
    uint256 public reentered;

    constructor(InferenceMarket market_) {
        market = market_;
    }

    function stake() external payable {
        market.stake{value: msg.value}();
    }

    function commit(uint256 requestId, bytes32 commitment) external {
        market.commit(requestId, commitment);
    }

    function reveal(uint256 requestId, bytes32 outputHash, bytes32 salt) external {
        market.reveal(requestId, outputHash, salt);
    }

    function withdraw() external {
        market.withdraw();
    }

    receive() external payable {
        if (reentered < 3) {
            reentered += 1;
            market.withdraw(); // must fail: the guard reverts, so the whole withdraw reverts
        }
    }
}
