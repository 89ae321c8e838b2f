"""The main job end to end on the embedded chain: build, register, three nodes agree, settle.

Used by ``aivm demo`` (and so by ``scripts/demo.sh``); everything runs in one
process on web3's eth-tester chain (py-evm), nothing needs a server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax.chain._connect import Chain
from aivm_jax.chain._network import Network
from aivm_jax.chain._node import Node
from aivm_jax.program import save
from aivm_jax.runtime import infer

__all__ = ["run_network_demo"]


def _settle(network: Network, nodes: list[Node], request_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            node.step()
        info = network.request_info(request_id)
        if info["status"] != "open" and all(n.state.tasks[str(request_id)]["phase"] == "done" for n in nodes):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} did not settle in {timeout} s")
        time.sleep(0.3)


def run_network_demo(
    out_dir: Path,
    *,
    model: str = "digits-mlp",
    with_proof: bool = True,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    from aivm_jax.models import build, load_digits_data

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"[1/5] building zoo model {model}")
    program = build(model, progress)
    path = out_dir / f"{model}.aivm"
    save(program, path)
    progress(f"      model id {program.model_id}")

    progress("[2/5] starting the embedded chain (py-evm) and deploying the registry and market")
    chain = Chain.embedded()
    network = Network.deploy(chain)
    network.register(program, path.resolve().as_uri())
    progress(f"      registered {program.model_id} -> {path.resolve().as_uri()}")

    progress("[3/5] three nodes stake and watch the chain")
    nodes = [
        Node(network.as_account(a), out_dir / "nodes" / f"node{i}")
        for i, a in enumerate(chain.w3.eth.accounts[1:4])
    ]
    for node in nodes:
        node.ensure_stake()

    data = load_digits_data()
    x = data.x_test[:6].reshape((-1, *program.inputs[0].shape))
    progress(f"[4/5] a user requests inference on {len(x)} held-out digits (quorum 2 of 3, commit-reveal)")
    request_id = network.request(program.model_id, x, quorum=2, commit_window=15, reveal_window=15)
    info = _settle(network, nodes, request_id)
    local = infer(program, x)
    predicted = np.argmax(local.outputs, axis=-1).tolist()
    summary: dict[str, Any] = {
        "model_id": program.model_id,
        "request_id": request_id,
        "status": info["status"],
        "reveals": info["reveals"],
        "output_hash": info["output_hash"],
        "matches_local_infer": info["output_hash"] == local.output_hash,
        "predicted": predicted,
        "labels": data.y_test[:6].tolist(),
    }
    progress(f"      request {request_id} {info['status']} with {info['reveals']} identical reveals")
    progress(
        f"      agreed output hash {info['output_hash']} (local infer agrees: {summary['matches_local_infer']})"
    )
    progress(f"      predicted digits {predicted}, true labels {summary['labels']}")

    if with_proof:
        summary["proof"] = _proof_path(network, chain, program, x[:1], cache_dir, progress)
    else:
        progress("[5/5] proof skipped (--no-proof)")
    return summary


def _proof_path(network, chain, program, row, cache_dir, progress) -> dict[str, Any]:
    import json
    import tempfile

    from aivm_jax import proofs

    progress("[5/5] the zk path: a proof of one row, checked by the on-chain verifier")
    keys = proofs.setup(program, dev_srs=True, cache_dir=cache_dir, progress=progress)
    document = proofs.prove(program, row, cache_dir=cache_dir, progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        proofs.write_verifier(keys, Path(tmp), progress=progress)
        artifact = json.loads((Path(tmp) / "Verifier.json").read_text())
    verifier = chain.deploy(artifact["abi"], artifact["bytecode"])
    network.set_verifier(program.model_id, verifier)
    request_id = network.request(program.model_id, row, quorum=2, commit_window=600, reveal_window=600)
    network.as_account(chain.w3.eth.accounts[4]).submit_proof(request_id, document, keys)
    info = network.request_info(request_id)
    progress(f"      request {request_id} {info['status']} by proof: output hash {info['output_hash']}")
    return {
        "request_id": request_id,
        "status": info["status"],
        "by_proof": info["by_proof"],
        "output_hash": info["output_hash"],
        "proving_seconds": document["proving_seconds"],
    }
