"""The node daemon on the embedded chain: consensus, a refused program, and state that survives."""

from __future__ import annotations

import aivm_jax
from aivm_jax.chain import Node
from aivm_jax.conformance import DATA_DIR

from ._nodes import phase, settle, step_until


def test_three_nodes_agree_and_a_fresh_node_object_resumes(
    registered, mlp, mlp_inputs, chain, clock, tmp_path
):
    accounts = chain.w3.eth.accounts[1:4]
    nodes = [Node(registered.as_account(a), tmp_path / f"n{i}") for i, a in enumerate(accounts)]
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=2, commit_window=20, reveal_window=20)
    step_until(nodes, lambda: all(phase(n, rid) == "committed" for n in nodes), what="commitments")
    # a restarted daemon: a new object reading the same state file
    nodes[0].close()
    nodes[0] = Node(registered.as_account(accounts[0]), tmp_path / "n0")
    assert phase(nodes[0], rid) == "committed"
    assert settle(nodes, rid, clock) == ["done"] * 3
    info = registered.request_info(rid)
    assert info["status"] == "finalized" and info["reveals"] == 3
    assert info["output_hash"] == aivm_jax.infer(mlp, mlp_inputs).output_hash
    for node in nodes:
        node.close()


def test_a_node_refuses_a_program_that_is_not_the_registered_one(network, mlp, mlp_inputs, chain, tmp_path):
    # the registry says "this id lives at <the CNN's file>": the bytes hash to another id
    network.register(mlp, str(DATA_DIR / "digits-cnn.aivm"))
    with Node(network.as_account(chain.w3.eth.accounts[1]), tmp_path / "n") as node:
        rid = network.request(mlp.model_id, mlp_inputs, commit_window=20, reveal_window=20)
        step_until([node], lambda: phase(node, rid) == "refused", what="the refusal")
        task = node.state.tasks[str(rid)]
        assert "model id" in task["reason"]
        assert not (tmp_path / "n" / f"{mlp.model_id}.aivm").exists()
        assert network.request_info(rid)["commits"] == 0
