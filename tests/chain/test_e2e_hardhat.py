"""End to end on a real JSON-RPC node: Hardhat, 3 honest node processes and 1 faulty one.

The test starts Hardhat on 127.0.0.1, deploys and registers through the CLI,
runs `aivm node` processes, submits requests, and checks that every request
finalizes with the honest result and the faulty node is slashed; then it kills
an honest node right after it committed, restarts it, and checks that its
reveal is not lost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import aivm_jax
from aivm_jax.chain import Chain, Network, StateKey, default_state_path
from aivm_jax.chain._devnet import DEVNET_DIR, devnet_command
from aivm_jax.conformance import DATA_DIR

pytestmark = pytest.mark.slow
MLP = DATA_DIR / "digits-mlp.aivm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hardhat(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("hardhat") / "node.log"
    env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            devnet_command(port), cwd=DEVNET_DIR, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while "Private Key" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "hardhat did not start"
        time.sleep(0.5)
    time.sleep(1)
    keys = re.findall(r"Private Key: (0x[0-9a-f]{64})", log.read_text())
    yield {"url": url, "keys": keys}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def _on_chain(hardhat, deployments, key=None) -> list:
    """The options every chain command takes: endpoint, signer (if any), deployments file."""
    return ["--rpc-url", hardhat["url"], *(["--key", key] if key else []), "--deployments", deployments]


def _aivm(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aivm_jax.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _start_node(hardhat, key, models: Path, deployments: Path, faulty=False) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "aivm_jax.cli",
        "node",
        *map(str, _on_chain(hardhat, deployments, key)),
        "--models",
        str(models),
        "--poll",
        "0.3",
    ]
    if faulty:
        args.append("--faulty")
    log = open(models / "node.log", "a")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_network_of_processes_on_hardhat(hardhat, tmp_path):
    deployments = tmp_path / "deployments.json"
    keys = hardhat["keys"]
    deployed = _aivm(
        "chain",
        "deploy",
        *_on_chain(hardhat, deployments, keys[0]),
        "--json",
    )
    assert deployed.returncode == 0, deployed.stderr
    registered = _aivm(
        "register",
        MLP,
        "--uri",
        f"file://{MLP}",
        *_on_chain(hardhat, deployments, keys[0]),
        "--json",
    )
    assert registered.returncode == 0, registered.stderr
    program = aivm_jax.load(MLP)
    assert json.loads(registered.stdout)["model_id"] == program.model_id

    network = Network.load(Chain.connect(hardhat["url"], keys[0]), deployments)
    bond = network.bond()
    dirs = [tmp_path / f"node{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()
    node_keys = keys[1:5]
    addresses = [Chain.connect(hardhat["url"], k).address for k in node_keys]
    procs = [
        _start_node(hardhat, k, d, deployments, faulty=(i == 3))
        for i, (k, d) in enumerate(zip(node_keys, dirs))
    ]
    try:
        _wait(lambda: all(network.free_stake(a) >= bond for a in addresses), 120, "nodes to stake")
        stakes = [int(network.market.functions.stakeOf(a).call()) for a in addresses]

        # two requests, through the library and through the CLI
        x = np.load(DATA_DIR / "digits-mlp.inputs.npy")
        first = network.request(program.model_id, x[:4], quorum=2, commit_window=20, reveal_window=20)
        np.save(tmp_path / "x.npy", x[4:9])
        cli = _aivm(
            "request",
            program.model_id,
            "--input",
            tmp_path / "x.npy",
            "--quorum",
            "2",
            "--commit-window",
            "20",
            "--reveal-window",
            "20",
            "--wait",
            "--timeout",
            "180",
            *_on_chain(hardhat, deployments, keys[0]),
            "--json",
        )
        assert cli.returncode == 0, cli.stderr
        second = json.loads(cli.stdout)
        assert second["status"] == "finalized"
        assert second["output_hash"] == aivm_jax.infer(program, x[4:9]).output_hash
        info = network.wait_for_result(first, timeout=120)
        shown = _aivm("result", first, *_on_chain(hardhat, deployments), "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["output_hash"] == info["output_hash"]
        assert (
            info["status"] == "finalized"
            and info["output_hash"] == aivm_jax.infer(program, x[:4]).output_hash
        )
        assert info["reveals"] == 4  # the faulty node revealed too, and lost

        after = [int(network.market.functions.stakeOf(a).call()) for a in addresses]
        assert after[:3] == stakes[:3]
        assert after[3] == stakes[3] - 2 * bond  # slashed once per request

        # crash an honest node right after it commits, restart it, and lose nothing
        third = network.request(program.model_id, x[9:12], quorum=3, commit_window=20, reveal_window=60)
        key = StateKey(network.chain.chain_id, network.market_address, addresses[0])
        state = default_state_path(dirs[0], key)

        def committed():
            task = json.loads(state.read_text())["tasks"].get(str(third), {})
            return task.get("phase") == "committed"

        _wait(committed, 60, "node 0 to commit")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs[0] = _start_node(hardhat, node_keys[0], dirs[0], deployments)
        info = network.wait_for_result(third, timeout=150)
        assert info["status"] == "finalized", info
        assert info["output_hash"] == aivm_jax.infer(program, x[9:12]).output_hash
        revealed = network.market.functions.revealed(third, addresses[0]).call()
        assert "0x" + revealed.hex() == info["output_hash"]  # the restarted node revealed its commitment
        _wait(
            lambda: json.loads(state.read_text())["tasks"][str(third)]["phase"] == "done",
            60,
            "node 0 to finish",
        )
        slashed = [e["args"]["node"] for e in network.market.events.Slashed().get_logs(from_block=0)]
        assert slashed == [addresses[3]] * 3  # only the faulty node, once per request it answered

    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_dispute_game_on_hardhat_finds_the_lie_and_the_honest_node_wins(hardhat):
    """Two agents signing with their own keys play `DisputeGame` over JSON-RPC: a liar at a
    middle step of digits-mlp against an honest node."""
    from aivm_jax.chain import GameAgent, artifact, create_game, deploy_game, play
    from aivm_jax.disputes import (
        Outcome,
        TraceProvider,
        commit_values,
        faulty_values,
        input_commitment,
        model_commitment,
        step_values,
    )

    program = aivm_jax.load(MLP)
    inputs = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1]
    keys = hardhat["keys"]
    chain = Chain.connect(hardhat["url"], keys[5])
    game = chain.w3.eth.contract(address=deploy_game(chain), abi=artifact("DisputeGame")["abi"])
    model = model_commitment(program)
    honest = commit_values(program, step_values(program, inputs))
    step = len(program.inputs) + len(program.nodes) // 2
    liar = commit_values(program, faulty_values(program, inputs, step, element=4))
    root = input_commitment(honest, len(program.inputs))
    liar_agent = GameAgent(Chain.connect(hardhat["url"], keys[6]), game, TraceProvider(liar, model, root, 1))
    honest_agent = GameAgent(
        Chain.connect(hardhat["url"], keys[7]), game, TraceProvider(honest, model, root, 1)
    )
    game_id = create_game(
        chain,
        game,
        defender=liar_agent.address,
        challenger=honest_agent.address,
        model=model,
        inputs=root,
        batch=1,
        defender_root=liar.root,
        challenger_root=honest.root,
        clock=3600,
    )
    state = play([liar_agent, honest_agent], game_id)
    assert state.outcome == Outcome.CHALLENGER_WINS
    assert (state.step, state.element) == (step, 4)
    assert state.spent_c > 0 and state.spent_d > 0


def test_devnet_command_serves_json_rpc_and_stops_on_ctrl_c():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aivm_jax.cli", "chain", "devnet", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def answers():
            try:
                return Chain.connect(url).chain_id == 31337
            except aivm_jax.ChainConnectionError:
                return False

        _wait(answers, 60, "the devnet to answer")
        assert len(Chain.connect(url).w3.eth.accounts) >= 10  # Hardhat's funded dev accounts
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        output, _ = process.communicate(timeout=30)
    assert process.returncode in (0, 130), output
    with pytest.raises(aivm_jax.ChainConnectionError):
        Chain.connect(url)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.5])
def test_ctrl_c_is_a_clean_stop_whoever_exits_first(delay):
    # Hardhat gets the group's SIGINT too and may exit before the command notices, with its own
    # status (254 was seen); the command must still report a clean stop.
    process = subprocess.Popen(
        [sys.executable, "-m", "aivm_jax.cli", "chain", "devnet", "--port", str(_free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while not any("Started HTTP" in line for line in lines):
        assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
        lines.append(process.stdout.readline())
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(lines) + output
    assert "devnet stopped" in output
