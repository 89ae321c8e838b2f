"""The AIVM network on chain: model registry, inference market, node daemon (web3.py).

`Chain` is a connection plus a signing account (embedded py-evm by default, or
any JSON-RPC node); `Network` is the deployed contracts; `Node` is the daemon
that answers requests with commit-reveal.
"""

from aivm_jax.chain._artifacts import artifact, build_artifacts
from aivm_jax.chain._connect import DEFAULT_RPC_URL, Chain
from aivm_jax.chain._network import DEFAULT_BOND, Network, RequestStatus, commitment, default_deployments_path
from aivm_jax.chain._node import Node, NodeState

__all__ = [
    "DEFAULT_BOND",
    "DEFAULT_RPC_URL",
    "Chain",
    "Network",
    "Node",
    "NodeState",
    "RequestStatus",
    "artifact",
    "build_artifacts",
    "commitment",
    "default_deployments_path",
]
