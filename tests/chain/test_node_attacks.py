"""Attacks on the node daemon (issue 19, findings 3-5): each must fail for that request alone,
with its reason recorded, and the node must serve an honest request afterwards."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import aivm_jax
from aivm_jax.chain import DEFAULT_POLICY, Node, NodePolicy
from aivm_jax.conformance import DATA_DIR

from ._nodes import phase, settle, step_until
from ._servers import http_server

CNN = DATA_DIR / "digits-cnn.aivm"


@pytest.fixture
def make_node(registered, chain, tmp_path):
    made = []

    def make(policy=DEFAULT_POLICY, account=1, directory="n", **kw):
        node = Node(
            registered.as_account(chain.w3.eth.accounts[account]), tmp_path / directory, policy=policy, **kw
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def _raw_request(network, model_id, *, data=b"", uri="", fee=10**15, commit_window=20, reveal_window=20):
    """A request as an attacker sends it: any bytes, any URI, any input hash."""
    fn = network.market.functions.requestInference(
        bytes.fromhex(model_id[2:]), b"\x07" * 32, data, uri, 1, commit_window, reveal_window
    )
    receipt = network.chain.transact(fn, value=fee)
    (event,) = network.market.events.InferenceRequested().process_receipt(receipt)
    return int(event["args"]["requestId"])


def _serves_honestly(node, network, mlp, mlp_inputs, clock):
    rid = network.request(mlp.model_id, mlp_inputs, quorum=1, commit_window=20, reveal_window=20)
    assert settle([node], rid, clock) == ["done"]
    info = network.request_info(rid)
    assert info["status"] == "finalized"
    assert info["output_hash"] == aivm_jax.infer(mlp, mlp_inputs).output_hash


def _refused(node, rid, what):
    step_until([node], lambda: phase(node, rid) in ("refused", "skipped"), what=what)
    return node.state.tasks[str(rid)]


def test_a_one_byte_inline_input_is_refused_and_a_restart_does_not_retry_it(
    make_node, registered, mlp, mlp_inputs, clock
):
    node = make_node()
    rid = _raw_request(registered, mlp.model_id, data=b"\x01")
    task = _refused(node, rid, "the refusal")
    assert task["phase"] == "refused"
    assert "inline input has 1 bytes, not a whole number of rows" in task["reason"]
    assert task["input_data"] == ""  # pruned
    node.close()
    again = make_node()  # a restarted daemon reads the refusal and does not run it again
    again.step()
    assert phase(again, rid) == "refused"
    _serves_honestly(again, registered, mlp, mlp_inputs, clock)


def test_input_uris_follow_the_policy(make_node, registered, mlp, mlp_inputs, clock, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    os.mkfifo(inputs / "fifo.npy")
    (inputs / "passwd.npy").symlink_to("/etc/passwd")
    np.save(inputs / "wrong.npy", np.zeros((2, 3), np.int8))
    np.save(inputs / "floats.npy", np.zeros((2, 64), np.float32))
    with open(inputs / "header.npy", "wb") as handle:  # a header announcing 64 TB, then nothing
        header = {"descr": "|i1", "fortran_order": False, "shape": (10**12, 64)}
        np.lib.format.write_array_header_1_0(handle, header)
    # with no input directory, every local path is skipped before anything is read
    plain = make_node(directory="plain")
    rid = _raw_request(registered, mlp.model_id, uri="/etc/passwd")
    assert "local path" in _refused(plain, rid, "/etc/passwd")["reason"]
    rid = _raw_request(registered, mlp.model_id, uri="ftp://example.com/x.npy")
    assert "scheme 'ftp'" in _refused(plain, rid, "ftp")["reason"]
    plain.close()

    node = make_node(policy=NodePolicy(input_dir=inputs), directory="dir")
    cases = {
        "/etc/passwd": "outside this node's input directory",
        "file:///etc/passwd": "outside this node's input directory",
        "../../../../../../etc/passwd": "outside this node's input directory",
        str(inputs / "passwd.npy"): "outside this node's input directory",  # a symlink out
        str(inputs / "missing.npy"): "no file at",
        str(inputs / "fifo.npy"): "not a regular file",
        str(inputs / "wrong.npy"): "has shape (2, 3)",
        str(inputs / "floats.npy"): "not integers",
        str(inputs / "header.npy"): "announces",
    }
    start = time.monotonic()
    ids = {uri: _raw_request(registered, mlp.model_id, uri=uri) for uri in cases}
    for uri, reason in cases.items():
        task = _refused(node, ids[uri], uri)
        assert task["phase"] == "refused" and reason in task["reason"], (uri, task)
    assert time.monotonic() - start < 30  # the FIFO blocked nothing
    # an honest input file inside the directory is served
    np.save(inputs / "good.npy", mlp_inputs)
    rid = registered.request(
        mlp.model_id,
        mlp_inputs,
        quorum=1,
        commit_window=20,
        reveal_window=20,
        input_uri=str(inputs / "good.npy"),
        inline=False,
    )
    assert settle([node], rid, clock) == ["done"]
    assert registered.request_info(rid)["output_hash"] == aivm_jax.infer(mlp, mlp_inputs).output_hash


def test_requests_outside_the_policy_are_skipped_with_their_reason(
    make_node, registered, mlp, mlp_inputs, clock
):
    policy = NodePolicy(
        min_fee=10**15, max_commit_window=60, min_reveal_window=15, max_lock=200, max_input_bytes=4096
    )
    node = make_node(policy=policy)
    cases = {
        "below this node's minimum": registered.request(mlp.model_id, mlp_inputs, quorum=1, fee=10**14),
        "commit window of": registered.request(mlp.model_id, mlp_inputs, quorum=1, commit_window=120),
        "reveal window of 10 s": registered.request(mlp.model_id, mlp_inputs, quorum=1, reveal_window=10),
        "locked": registered.request(mlp.model_id, mlp_inputs, quorum=1, commit_window=60, reveal_window=180),
        "inline input of": registered.request(mlp.model_id, np.repeat(mlp_inputs, 30, axis=0), quorum=1),
    }
    for reason, rid in cases.items():
        task = _refused(node, rid, reason)
        assert task["phase"] == "skipped" and reason in task["reason"], (reason, task)
        assert registered.request_info(rid)["commits"] == 0
    assert node.state.tasks[str(cases["inline input of"])]["input_data"] == ""  # never stored
    _serves_honestly(node, registered, mlp, mlp_inputs, clock)


def test_work_over_the_budget_is_refused(make_node, registered, mlp, mlp_inputs, clock):
    node = make_node(policy=NodePolicy(max_infer_bytes=1000))
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1)
    task = _refused(node, rid, "the budget")
    assert task["phase"] == "refused" and "budget" in task["reason"]
    node.close()
    _serves_honestly(make_node(directory="n2"), registered, mlp, mlp_inputs, clock)


def test_a_dripping_program_uri_does_not_stop_the_node_serving_another_request(
    make_node, registered, mlp, mlp_inputs, clock
):
    cnn = aivm_jax.load(CNN)
    with http_server() as server:
        registered.register(cnn, f"{server.url}/drip")
        node = make_node(policy=NodePolicy(download_timeout=600))
        slow = registered.request(cnn.model_id, np.zeros((1, *cnn.inputs[0].shape), np.int8), quorum=1)
        step_until([node], lambda: server.dripped > 0, what="the drip to start")
        # while the program drips in, the node commits, reveals and finalizes another request
        _serves_honestly(node, registered, mlp, mlp_inputs, clock)
        assert phase(node, slow) == "new" and cnn.model_id in node._loading
        node.close()  # abandons the fetch at its next byte and hangs up
        deadline = time.monotonic() + 10
        while server.dropped == 0:
            assert time.monotonic() < deadline, "the node kept the dripping connection open"
            time.sleep(0.1)

        # with the usual time limit, the fetch is cut off and the request refused
        node = make_node(policy=NodePolicy(download_timeout=2), directory="n2", account=2)
        start = time.monotonic()
        task = _refused(node, slow, "the time limit")
        assert task["phase"] == "refused" and "download time limit" in task["reason"]
        assert time.monotonic() - start < 15
        assert not list((node.models_dir).glob("*.aivm*"))  # no partial file kept
        _serves_honestly(node, registered, mlp, mlp_inputs, clock)


@pytest.mark.parametrize("uri", ["/dev/zero", "file:///dev/zero"])
def test_a_program_uri_of_dev_zero_is_refused_without_reading_it(
    make_node, registered, mlp, mlp_inputs, clock, uri
):
    cnn = aivm_jax.load(CNN)
    registered.register(cnn, uri)
    node = make_node()
    rid = registered.request(cnn.model_id, np.zeros((1, *cnn.inputs[0].shape), np.int8), quorum=1)
    task = _refused(node, rid, "/dev/zero")
    assert task["phase"] == "refused" and "not a regular file" in task["reason"]
    _serves_honestly(node, registered, mlp, mlp_inputs, clock)


def test_a_program_larger_than_the_node_accepts_is_refused_before_it_is_fetched(
    make_node, registered, mlp, mlp_inputs, clock, tmp_path
):
    cnn = aivm_jax.load(CNN)
    with http_server() as server:
        registered.register(cnn, f"{server.url}/huge")
        node = make_node(policy=NodePolicy(max_model_bytes=1000))
        rid = registered.request(cnn.model_id, np.zeros((1, *cnn.inputs[0].shape), np.int8), quorum=1)
        task = _refused(node, rid, "the size limit")
        assert "over this node's limit" in task["reason"] and server.hits == []


def test_requests_judged_by_a_verifier_the_node_did_not_generate_are_skipped(
    make_node, registered, chain, mlp, mlp_inputs, clock, tmp_path
):
    # a proof through a dishonest verifier could finalize another output and slash the node's
    # honest reveal, so the node serves only requests whose verifier it generated itself
    from eth_utils import keccak

    from aivm_jax.chain import artifact, record_verifier

    records = tmp_path / "verifiers.json"
    node = make_node(NodePolicy(verifiers=records, max_lock=10**6))
    evil = chain.deploy(artifact("AcceptAllVerifier")["abi"], artifact("AcceptAllVerifier")["bytecode"])
    registered.set_verifier(mlp.model_id, evil)
    rid = registered.request(mlp.model_id, mlp_inputs, quorum=1, commit_window=20, reveal_window=20)
    task = _refused(node, rid, "the skip")
    assert task["phase"] == "skipped" and "has not generated" in task["reason"]
    # once the node has generated (and so recorded) that verifier, it serves
    record_verifier(mlp.model_id, "0x" + keccak(bytes(chain.w3.eth.get_code(evil))).hex(), None, records)
    _serves_honestly(node, registered, mlp, mlp_inputs, clock)
