"""The node's state file and log scan (issue 19, finding 9): keyed by chain, market and node; a
damaged file neither crashes the node nor loses its salts; bounded log ranges; pruning."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

import aivm_jax
from aivm_jax import StateFileError
from aivm_jax.chain import Network, Node, NodePolicy, NodeState, StateKey

from ._nodes import phase, settle, step_until

KEY = StateKey(1, "0x" + "aa" * 20, "0x" + "bb" * 20)


def _node(network, chain, path, account=1, **kw):
    return Node(network.as_account(chain.w3.eth.accounts[account]), path, **kw)


def test_a_redeployed_market_gets_its_own_state(registered, mlp, mlp_inputs, chain, clock, tmp_path):
    first = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    with _node(registered, chain, tmp_path) as node:
        assert settle([node], first, clock) == ["done"]
    # a new market on the same chain: its request ids start at 1 again
    redeployed = Network.deploy(chain)
    redeployed.register(mlp, registered.model(mlp.model_id)["uri"])
    again = redeployed.request(mlp.model_id, mlp_inputs, quorum=1)
    assert again == first
    with _node(redeployed, chain, tmp_path) as node:  # the same directory
        assert f"-{redeployed.market_address.lower()}-" in node.state.path.name
        assert phase(node, again) is None  # not the old market's finished request 1
        assert settle([node], again, clock) == ["done"]
    assert redeployed.request_info(again)["status"] == "finalized"
    assert len(list(tmp_path.glob("node-*.json"))) == 2
    # a state file of the old market, given by hand, is refused
    old = next(p for p in tmp_path.glob("node-*.json") if registered.market_address.lower() in p.name)
    with pytest.raises(StateFileError, match="belongs to"):
        _node(redeployed, chain, tmp_path, state_path=old)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[1, 2]", b'{"tasks": {"1": 7}, "next_block": 0}'])
def test_a_damaged_state_file_falls_back_to_the_previous_copy_and_the_node_still_reveals(
    registered, mlp, mlp_inputs, chain, clock, tmp_path, caplog, garbage
):
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    node = _node(registered, chain, tmp_path)
    step_until([node], lambda: phase(node, rid) == "committed", what="the commitment")
    node.step()  # one more save: the previous copy now holds the salt too
    node.close()
    node.state.path.write_bytes(garbage)
    with caplog.at_level(logging.ERROR, "aivm.node"):
        node = _node(registered, chain, tmp_path)
    assert "damaged" in caplog.text and "previous copy" in caplog.text
    assert list(tmp_path.glob("node-*.json.corrupt-*"))  # kept aside for a human
    assert phase(node, rid) in ("computed", "committed")
    assert settle([node], rid, clock) == ["done"]
    node.close()
    assert registered.request_info(rid)["reveals"] == 1  # its salt survived: revealed, not slashed


def test_a_damaged_state_file_without_a_previous_copy_starts_afresh_loudly(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_text("{garbage")
    with caplog.at_level(logging.ERROR, "aivm.node"):
        state = NodeState.load(path, KEY)
    assert state.tasks == {} and state.next_block is None
    assert "starting afresh" in caplog.text and not path.exists()
    state.next_block = 5
    state.save()
    assert NodeState.load(path, KEY).next_block == 5
    with pytest.raises(StateFileError):
        NodeState.load(path, dataclasses.replace(KEY, chain_id=2))


def test_the_state_forgets_inputs_once_computed_and_finished_tasks_after_retention(
    registered, mlp, mlp_inputs, chain, clock, tmp_path
):
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    with _node(registered, chain, tmp_path, policy=NodePolicy(retention=3600)) as node:
        node.step()
        assert node.state.tasks[str(rid)]["input_data"]  # kept until the output is computed
        assert settle([node], rid, clock) == ["done"]
        saved = json.loads(node.state.path.read_text())["tasks"][str(rid)]
        assert saved["input_data"] == "" and saved["finished_at"] > 0
        node.policy = NodePolicy(retention=0)
        node.step()
        assert str(rid) not in json.loads(node.state.path.read_text())["tasks"]
        node.step()  # the scan does not bring it back
        assert str(rid) not in node.state.tasks


def test_the_log_scan_starts_at_the_deployment_block_in_bounded_ranges(
    registered, mlp, mlp_inputs, chain, clock, tmp_path, monkeypatch
):
    from web3.contract.contract import ContractEvent

    ranges = []
    get_logs = ContractEvent.__dict__["get_logs"]  # a combomethod: bind it by hand

    def spy(self, *args, from_block=None, to_block=None, **kw):
        ranges.append((from_block, to_block))
        return get_logs.__get__(self, type(self))(*args, from_block=from_block, to_block=to_block, **kw)

    monkeypatch.setattr(ContractEvent, "get_logs", spy)
    chain.w3.provider.ethereum_tester.mine_blocks(100)
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    latest = chain.w3.eth.block_number
    assert registered.deploy_block > 0
    with _node(registered, chain, tmp_path, scan_blocks=7) as node:
        node.step()
        assert ranges[0][0] == registered.deploy_block
        assert all(b - a + 1 <= 7 for a, b in ranges)
        assert all(ranges[i + 1][0] == ranges[i][1] + 1 for i in range(len(ranges) - 1))
        # at most SCAN_RANGES_PER_STEP (10) ranges a step, so a node far behind still meets its deadlines
        assert len(ranges) == 10 and node.state.next_block == registered.deploy_block + 70
        assert str(rid) not in node.state.tasks
        node.step()
        assert str(rid) in node.state.tasks and node.state.next_block > latest
        assert settle([node], rid, clock) == ["done"]
    # without a known deployment block, the first scan looks back a bounded number of blocks
    ranges.clear()
    unknown = dataclasses.replace(registered, deploy_block=0)
    with _node(unknown, chain, tmp_path / "b", account=2, lookback=5) as node:
        node.step()
    assert ranges[0][0] >= latest - 5 and ranges[0][0] > registered.deploy_block
    assert aivm_jax.infer(mlp, mlp_inputs).output_hash == registered.request_info(rid)["output_hash"]
