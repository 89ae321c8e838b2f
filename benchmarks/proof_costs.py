"""Proof costs of the AIVM's exact circuits vs EZKL's own default pipeline, on the digits zoo models.

    .venv/bin/python benchmarks/proof_costs.py [--examples N]

For each model, in one run on one machine, each pipeline runs in its own
process (so peak memory is its own):

* **aivm**: the integer program exported exactly (`aivm_jax.proofs`), scale 0,
  settings from integer bounds; agreement = EZKL witness == `infer`, bit for bit.
* **ezkl default**: the *float* Flax model of the same recipe as ONNX,
  `gen_settings` + `calibrate_settings(target="resources")`, EZKL's own
  fixed-point approximation; agreement = argmax equal to the float model.

"prove s" is EZKL's ``prove`` call alone in both pipelines (each computes its
witness first, untimed); the AIVM's whole ``proofs.prove`` call, which also runs
``infer`` and checks EZKL's witness against it, is printed below its row.

Reported: setup and proving seconds, peak RSS, proof bytes, the deployed bytes
of the circuit's own verifier, verification gas on py-evm through it ("too
big" when it is over the 24,576-byte contract limit) and through EZKL's
reusable verifier (about 11 KB, the model's VKA registered), accuracy on N
held-out images.
A development SRS is generated once per size and not timed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _float_onnx import float_onnx

SRS_DIR = Path(tempfile.gettempdir()) / "aivm-bench-srs"
MAX_DEFAULT_LOGROWS = 20  # keeps EZKL's own calibration within this machine's memory


def _srs(logrows: int) -> Path:
    from aivm_jax.proofs._ezkl import call

    SRS_DIR.mkdir(exist_ok=True)
    path = SRS_DIR / f"k{logrows}.srs"
    if not path.exists():
        call("gen_srs", str(path), logrows)
    return path


def _evm(keys_vk, settings, srs, vka, proof_path, work: Path) -> dict[str, int | None]:
    """Deployed bytes and ``verifyProof`` gas on py-evm of the circuit's own verifier and of
    the reusable one (with its VKA registered); None for an own verifier over the size limit."""
    from web3 import EthereumTesterProvider, Web3

    from aivm_jax.proofs._evm import CONTRACT_SIZE_LIMIT, compile_solidity, read_vka
    from aivm_jax.proofs._ezkl import call

    w3 = Web3(EthereumTesterProvider())
    sender = w3.eth.accounts[0]
    out: dict[str, int | None] = {}
    for kind in ("own", "reusable"):
        reusable = kind == "reusable"
        sol = work / f"{kind}.sol"
        try:
            call(
                "create_evm_verifier",
                str(keys_vk),
                str(settings),
                str(sol),
                str(work / "abi.json"),
                str(srs),
                reusable,
            )
        except Exception:
            if not sol.exists():
                raise
        compiled = compile_solidity(sol)
        art = compiled[next(k for k in compiled if k != "compiler")]
        size = (len(art["deployedBytecode"]) - 2) // 2
        out[f"{kind}_bytes"] = size
        if size > CONTRACT_SIZE_LIMIT:
            out[f"{kind}_gas"] = None
            continue
        tx = (
            w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor().transact({"from": sender})
        )
        address = w3.eth.get_transaction_receipt(tx).contractAddress
        if reusable:
            contract = w3.eth.contract(address=address, abi=art["abi"])
            contract.functions.registerVka(read_vka(vka)).transact({"from": sender})
        call("encode_evm_calldata", str(proof_path), str(work / "cd.bin"), *([str(vka)] if reusable else []))
        data = "0x" + (work / "cd.bin").read_bytes().hex()
        assert int.from_bytes(w3.eth.call({"to": address, "data": data})[:32], "big") == 1
        out[f"{kind}_gas"] = w3.eth.estimate_gas({"to": address, "data": data})
    return out


def _aivm(name: str, examples: int, queue) -> None:
    import aivm_jax
    from aivm_jax import proofs
    from aivm_jax.conformance import DATA_DIR
    from aivm_jax.models import load_digits_data
    from aivm_jax.proofs._ezkl import call

    program = aivm_jax.load(DATA_DIR / f"{name}.aivm")
    data = load_digits_data()
    x = data.x_test[:examples].reshape((-1, *program.inputs[0].shape))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = proofs.build_circuit(program, work / "probe")
        srs = _srs(files.logrows())
        start = time.perf_counter()
        keys = proofs.setup(program, srs=srs, cache_dir=work / "cache")
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        document = proofs.prove(program, x[:1], cache_dir=work / "cache")
        prove_call_s = time.perf_counter() - start
        prove_s = document["proving_seconds"]  # EZKL's prove step alone, as timed for EZKL's pipeline
        (work / "proof.json").write_text(json.dumps(document["proof"]))
        evm = _evm(keys.vk, keys.circuit.settings, srs, keys.vka, work / "proof.json", work)
        expected = aivm_jax.infer(program, x).outputs
        exact = correct = 0
        for row, want, label in zip(x, expected, data.y_test):
            (work / "in.json").write_text(json.dumps({"input_data": [row.reshape(-1).tolist()]}))
            call("gen_witness", str(work / "in.json"), str(keys.circuit.compiled), str(work / "w.json"))
            got = json.loads((work / "w.json").read_text())["outputs"][0]
            exact += got == [proofs.field_element(v) for v in want.reshape(-1).tolist()]
            correct += int(np.argmax(want)) == label
    queue.put(
        {
            "logrows": keys.logrows,
            "setup_s": setup_s,
            "prove_s": prove_s,
            "prove_call_s": prove_call_s,
            "proof_bytes": len(bytes.fromhex(document["proof"]["hex_proof"][2:])),
            **evm,
            "agreement": f"{exact}/{examples} bit-exact",
            "accuracy": correct / examples,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _ezkl_default(name: str, examples: int, queue) -> None:
    import ezkl

    from aivm_jax.models import (
        DIGITS_RECIPES,
        PIXEL_SCALE,
        SequentialNet,
        load_digits_data,
        train_float_model,
    )
    from aivm_jax.proofs._ezkl import call

    recipe = DIGITS_RECIPES[name]
    params = train_float_model(recipe)
    data = load_digits_data()
    x = (data.x_test[:examples] * PIXEL_SCALE).astype(np.float32).reshape((-1, *recipe.input_shape))
    import jax

    with jax.numpy_dtype_promotion("standard"):
        float_logits = np.asarray(SequentialNet(layers=recipe.layers).apply({"params": params}, x))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "m.onnx").write_bytes(float_onnx(recipe.layers, params, recipe.input_shape))
        calib = (data.x_train[:32] * PIXEL_SCALE).astype(np.float32).reshape(32, -1)
        (work / "cal.json").write_text(json.dumps({"input_data": [calib.reshape(-1).tolist()]}))
        (work / "in.json").write_text(json.dumps({"input_data": [x[0].reshape(-1).tolist()]}))
        start = time.perf_counter()
        ezkl.gen_settings(str(work / "m.onnx"), str(work / "s.json"))
        ezkl.calibrate_settings(
            str(work / "in.json"), str(work / "m.onnx"), str(work / "s.json"), "resources"
        )
        ezkl.compile_circuit(str(work / "m.onnx"), str(work / "c.ezkl"), str(work / "s.json"))
        logrows = json.loads((work / "s.json").read_text())["run_args"]["logrows"]
        srs = _srs(logrows)
        ezkl.setup(str(work / "c.ezkl"), str(work / "vk.key"), str(work / "pk.key"), str(srs))
        call("create_evm_vka", str(work / "vk.key"), str(work / "s.json"), str(work / "vka.bin"), str(srs))
        setup_s = time.perf_counter() - start
        ezkl.gen_witness(str(work / "in.json"), str(work / "c.ezkl"), str(work / "w.json"))
        start = time.perf_counter()
        ezkl.prove(
            str(work / "w.json"),
            str(work / "c.ezkl"),
            str(work / "pk.key"),
            str(work / "proof.json"),
            str(srs),
        )
        prove_s = time.perf_counter() - start
        assert ezkl.verify(str(work / "proof.json"), str(work / "s.json"), str(work / "vk.key"), str(srs))
        proof = json.loads((work / "proof.json").read_text())
        evm = _evm(work / "vk.key", work / "s.json", srs, work / "vka.bin", work / "proof.json", work)
        agree = correct = 0
        for row, ref, label in zip(x, float_logits, data.y_test):
            (work / "in.json").write_text(json.dumps({"input_data": [row.reshape(-1).tolist()]}))
            ezkl.gen_witness(str(work / "in.json"), str(work / "c.ezkl"), str(work / "w.json"))
            out = [
                float(v)
                for v in json.loads((work / "w.json").read_text())["pretty_elements"]["rescaled_outputs"][0]
            ]
            agree += int(np.argmax(out)) == int(np.argmax(ref))
            correct += int(np.argmax(out)) == label
    queue.put(
        {
            "logrows": logrows,
            "setup_s": setup_s,
            "prove_s": prove_s,
            "proof_bytes": len(bytes.fromhex(proof["hex_proof"][2:])),
            **evm,
            "agreement": f"{agree}/{examples} argmax",
            "accuracy": correct / examples,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _gas(gas: int | None) -> str:
    return "too big" if gas is None else str(gas)


def _in_process(target, *args) -> dict | None:
    """Run one pipeline in its own process; None if it died (out of memory, say)."""
    import queue as queue_module

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                print(
                    f"  {target.__name__} {args[0]}: the process died with exit code {process.exitcode}",
                    flush=True,
                )
                return None
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn"])
    args = parser.parse_args()
    header = (
        f"{'model':11s} {'pipeline':12s} {'logrows':>7s} {'setup s':>8s} {'prove s':>8s} {'peak MB':>8s} "
        f"{'proof B':>8s} {'own B':>7s} {'own gas':>9s} {'reus. gas':>9s} {'accuracy':>8s}  agreement"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        rows = {
            "aivm": _in_process(_aivm, name, args.examples),
            "ezkl default": _in_process(_ezkl_default, name, args.examples),
        }
        for pipeline, r in rows.items():
            print(
                f"{name:11s} {pipeline:12s} {r['logrows']:7d} {r['setup_s']:8.1f} {r['prove_s']:8.1f} {r['peak_mb']:8.0f} "
                f"{r['proof_bytes']:8d} {r['own_bytes']:7d} {_gas(r['own_gas']):>9s} {_gas(r['reusable_gas']):>9s} "
                f"{100 * r['accuracy']:7.1f}%  {r['agreement']}"
            )
        a, e = rows["aivm"], rows["ezkl default"]
        print(
            f"{name:11s} {'':12s} aivm: `proofs.prove` end to end {a['prove_call_s']:.1f} s "
            "(keys, `infer`, EZKL's witness and its check against `infer`, then prove)"
        )
        print(
            f"{name:11s} {'ratio':12s} {'':7s} {e['setup_s'] / a['setup_s']:7.2f}x {e['prove_s'] / a['prove_s']:7.2f}x "
            f"{e['peak_mb'] / a['peak_mb']:7.2f}x   (ezkl default / aivm: > 1 means the AIVM is cheaper)"
        )


if __name__ == "__main__":
    main()
