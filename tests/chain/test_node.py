"""The node daemon on the embedded chain: consensus, a refused program, and state that survives."""

from __future__ import annotations

import time

import aivm_jax
from aivm_jax.chain import Node
from aivm_jax.conformance import DATA_DIR


def _run(nodes, network, request_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.step()
        phases = [n.state.tasks.get(str(request_id), {}).get("phase") for n in nodes]
        if all(p in ("done", "refused", "missed") for p in phases):
            return phases
        time.sleep(0.2)
    raise AssertionError(f"nodes did not settle: {phases}")


def test_three_nodes_agree_and_a_fresh_node_object_resumes(registered, mlp, mlp_inputs, chain, tmp_path):
    accounts = chain.w3.eth.accounts[1:4]
    nodes = [Node(registered.as_account(a), tmp_path / f"n{i}") for i, a in enumerate(accounts)]
    for node in nodes:
        node.ensure_stake()
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=2, commit_window=20, reveal_window=20)
    for node in nodes:
        node.step()  # sees the request, computes, commits
    assert all(n.state.tasks[str(rid)]["phase"] == "committed" for n in nodes)
    # a restarted daemon: a new object reading the same state file
    nodes[0] = Node(registered.as_account(accounts[0]), tmp_path / "n0")
    assert nodes[0].state.tasks[str(rid)]["phase"] == "committed"
    assert _run(nodes, registered, rid) == ["done"] * 3
    info = registered.request_info(rid)
    assert info["status"] == "finalized" and info["reveals"] == 3
    assert info["output_hash"] == aivm_jax.infer(mlp, mlp_inputs).output_hash


def test_a_node_refuses_a_program_that_is_not_the_registered_one(network, mlp, mlp_inputs, chain, tmp_path):
    # the registry says "this id lives at <the CNN's file>": the bytes hash to another id
    network.register(mlp, str(DATA_DIR / "digits-cnn.aivm"))
    node = Node(network.as_account(chain.w3.eth.accounts[1]), tmp_path / "n")
    node.ensure_stake()
    rid = network.request(mlp.model_id, mlp_inputs, commit_window=20, reveal_window=20)
    node.step()
    task = node.state.tasks[str(rid)]
    assert task["phase"] == "refused" and "model id" in task["reason"]
    assert not (tmp_path / "n" / f"{mlp.model_id}.aivm").exists()
    assert network.request_info(rid)["commits"] == 0
