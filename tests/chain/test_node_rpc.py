"""The RPC layer and the daemon with a faulty chain (issue 19, finding 9): a transport failure and
a receipt timeout are told apart from a revert, and the daemon backs off and survives them."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import pytest
import requests
from web3.exceptions import TimeExhausted

import aivm_jax
from aivm_jax import ChainConnectionError, TransactionRevertedError, TransactionTimeoutError
from aivm_jax.chain import Node

from ._nodes import phase, settle, step_until


@contextmanager
def rpc_down(chain):
    """Every JSON-RPC request fails as if the node's port were closed, until the block ends."""
    provider = chain.w3.provider

    def refuse(method, params):
        raise requests.exceptions.ConnectionError(f"connection refused ({method})")

    provider.make_request = refuse
    provider._request_func_cache = (None, None)  # web3 caches the bound method
    try:
        yield
    finally:
        del provider.make_request
        provider._request_func_cache = (None, None)


def test_a_transport_failure_is_a_connection_error_not_a_revert(registered, chain):
    fn = registered.market.functions.finalize(1)
    with pytest.raises(TransactionRevertedError, match="NotOpen"):
        chain.call(fn)  # a real revert still names the contract's error
    with rpc_down(chain):
        for attempt in (chain.call, chain.transact):
            with pytest.raises(ChainConnectionError, match="did not answer") as caught:
                attempt(fn)
            assert not isinstance(caught.value, TransactionRevertedError)
            assert isinstance(caught.value, ConnectionError)  # the built-in, for callers that catch it


def test_a_receipt_timeout_has_its_own_error_and_the_node_does_not_commit_twice(
    registered, mlp, mlp_inputs, chain, clock, tmp_path, monkeypatch
):
    def never(tx_hash, timeout=120, poll_latency=0.1):
        raise TimeExhausted(f"Transaction {tx_hash!r} is not in the chain after {timeout} seconds")

    with monkeypatch.context() as patch:
        patch.setattr(
            type(chain.w3.eth), "wait_for_transaction_receipt", lambda self, h, **kw: never(h, **kw)
        )
        with pytest.raises(TransactionTimeoutError, match="may still be mined") as caught:
            registered.stake(1)
        assert not isinstance(caught.value, TransactionRevertedError) and "0x" in str(caught.value)
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    with Node(registered.as_account(chain.w3.eth.accounts[1]), tmp_path) as node:
        node.ensure_stake()
        eth = type(chain.w3.eth)
        real = eth.wait_for_transaction_receipt
        with monkeypatch.context() as patch:  # the commitment is mined, but its receipt never comes
            patch.setattr(eth, "wait_for_transaction_receipt", lambda self, h, **kw: never(h, **kw))
            step_until([node], lambda: node.state.tasks.get(str(rid), {}).get("salt"), what="the salt")
            assert phase(node, rid) == "computed"  # its commit timed out: not refused, salt kept
            node.step()  # the chain holds the commitment: the node sees it and sends nothing again
            assert phase(node, rid) == "committed"
        assert eth.wait_for_transaction_receipt is real
        assert settle([node], rid, clock) == ["done"]
    info = registered.request_info(rid)
    assert info["commits"] == 1 and info["status"] == "finalized"
    assert info["output_hash"] == aivm_jax.infer(mlp, mlp_inputs).output_hash


def test_step_raises_a_connection_error_and_keeps_the_task(
    registered, mlp, mlp_inputs, chain, clock, tmp_path
):
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    with Node(registered.as_account(chain.w3.eth.accounts[1]), tmp_path) as node:
        node.step()
        with rpc_down(chain), pytest.raises(ChainConnectionError):
            node.step()
        assert phase(node, rid) == "new"
        assert settle([node], rid, clock) == ["done"]


def test_run_survives_the_rpc_going_down_and_backs_off(
    registered, mlp, mlp_inputs, chain, clock, tmp_path, caplog
):
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    node = Node(registered.as_account(chain.w3.eth.accounts[1]), tmp_path)
    with rpc_down(chain):

        def come_back():
            del chain.w3.provider.make_request
            chain.w3.provider._request_func_cache = (None, None)

        # the outage starts before the daemon does, and ends two seconds in
        restorer = threading.Timer(2.0, come_back)
        restorer.start()
        with caplog.at_level(logging.WARNING, "aivm.node"):
            node.run(poll=0.05, stop_after=6, backoff=0.1, max_backoff=0.4)
        restorer.join()
        chain.w3.provider.make_request = None  # for rpc_down's cleanup
    delays = [
        r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()
    ]
    assert delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"]  # doubling, capped
    assert node.failures >= 4 and "did not answer" in caplog.text
    assert phase(node, rid) == "committed"  # it went on once the chain was back
    assert settle([node], rid, clock) == ["done"]
    node.close()
