"""The AIVM network on chain: model registry, inference market, node daemon (web3.py).

`Chain` is a connection plus a signing account (embedded py-evm by default, or
any JSON-RPC node); `Network` is the deployed contracts; `Node` is the daemon
that answers requests with commit-reveal.
"""

from aivm_jax.chain._artifacts import artifact, build_artifacts
from aivm_jax.chain._connect import DEFAULT_RPC_URL, Chain
from aivm_jax.chain._game import EXECUTORS, GameAgent, create_game, deploy_game, play
from aivm_jax.chain._network import (
    DEFAULT_BOND,
    DEFAULT_WINDOWS,
    Network,
    RequestStatus,
    Windows,
    commitment,
    default_deployments_path,
    default_verifiers_path,
    record_verifier,
)
from aivm_jax.chain._node import Node
from aivm_jax.chain._policy import DEFAULT_POLICY, NodePolicy
from aivm_jax.chain._state import NodeState, StateKey, default_state_path

__all__ = [
    "DEFAULT_BOND",
    "DEFAULT_RPC_URL",
    "DEFAULT_WINDOWS",
    "Chain",
    "EXECUTORS",
    "GameAgent",
    "create_game",
    "deploy_game",
    "play",
    "Network",
    "Node",
    "NodeState",
    "RequestStatus",
    "Windows",
    "artifact",
    "build_artifacts",
    "commitment",
    "default_deployments_path",
    "default_verifiers_path",
    "record_verifier",
    "DEFAULT_POLICY",
    "NodePolicy",
    "StateKey",
    "default_state_path",
]
