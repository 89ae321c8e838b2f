// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./OneStep.sol";

/// Placeholder (being written).
contract OneStepElementwise {}
