"""What a proof of part of a transformer block costs: layer 0's feed-forward sublayer.

    .venv/bin/python benchmarks/transformer_block_proof.py [--model minilm-l6|char-gpt]
        [--program FILE.aivm] [--tokens 1]

The sublayer is cut out of a real zoo program (built here if no ``--program``
is given): int8 hidden states ``(T, d)`` -> matmul ``d x 4d`` + bias ->
requantize -> GELU table (int8 -> int32) -> per-channel requantize -> matmul
``4d x d`` + bias -> int32 ``(T, d)``; ``d`` is 384 for minilm-l6 and 128 for
char-gpt. Those ops have an exact circuit export. The other half of a block (attention's softmax and
layer norm) does not: both divide by a value computed in the circuit (the
softmax row sum, the integer square root of the variance), and EZKL's ONNX
front end has no exact division by a computed value.

Reported, one run: circuit rows and logrows, setup and proving seconds, peak
RSS, proof bytes, verification gas on py-evm with the circuit's own verifier
(when it fits the contract size limit) and with the reusable one, and
whether the EZKL witness equals `infer` bit for bit on a few inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _timing import machine_line  # noqa: E402
from proof_costs import _evm, _gas, _srs  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax import Program, ValueSpec  # noqa: E402

FFN_NODES = {  # model -> (first node's output, last node's output) of layer 0's feed-forward sublayer
    "minilm-l6": ("layer0.ffn_up.acc", "layer0.ffn_down"),
    "char-gpt": ("layer0.up.acc", "layer0.down"),
}


def ffn_sublayer(program: Program, model: str, tokens: int) -> Program:
    """Layer 0's feed-forward nodes as a program of their own (int8 input ``(tokens, d)``)."""
    first, last = FFN_NODES[model]
    names = [node.output for node in program.nodes]
    nodes = program.nodes[names.index(first) : names.index(last) + 1]
    first_input = nodes[0].inputs[0]
    width = program.params[nodes[0].inputs[1]].shape[0]
    params = {name: program.params[name] for node in nodes for name in node.inputs if name in program.params}
    return Program(
        name=f"{model}.layer0.ffn",
        inputs=(ValueSpec(name=first_input, dtype="int8", shape=(tokens, width)),),
        outputs=(ValueSpec(name=last, dtype="int32", shape=(tokens, width)),),
        nodes=tuple(nodes),
        params=params,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(FFN_NODES), default="minilm-l6")
    parser.add_argument("--program", type=Path, help="the built zoo program (default: build it now)")
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--witnesses", type=int, default=4)
    args = parser.parse_args()
    from aivm_jax import proofs
    from aivm_jax.models import build
    from aivm_jax.proofs._ezkl import call

    full = aivm_jax.load(args.program) if args.program else build(args.model)
    block = ffn_sublayer(full, args.model, args.tokens)
    print(machine_line())
    print(
        f"{block.name}: {block.op_counts()}, {block.param_count()} weights, {args.tokens} token(s)",
        flush=True,
    )
    rng = np.random.default_rng(0)
    shape = (args.witnesses, *block.inputs[0].shape)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    x[0] = -128
    x[1] = 127
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        files = proofs.build_circuit(block, work / "probe")
        build_s = time.perf_counter() - start
        settings = json.loads(files.settings.read_text())
        print(
            f"circuit: {settings['num_rows']} rows, logrows {files.logrows()}, built in {build_s:.0f} s",
            flush=True,
        )
        srs = _srs(files.logrows())
        start = time.perf_counter()
        keys = proofs.setup(
            block, srs=srs, cache_dir=work / "cache", progress=lambda m: print(" ", m, flush=True)
        )
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        document = proofs.prove(
            block, x[:1], cache_dir=work / "cache", progress=lambda m: print(" ", m, flush=True)
        )
        prove_s = time.perf_counter() - start
        (work / "proof.json").write_text(json.dumps(document["proof"]))
        evm = _evm(keys.vk, keys.circuit.settings, srs, keys.vka, work / "proof.json", work)
        expected = aivm_jax.infer(block, x).outputs
        exact = 0
        for row, want in zip(x, expected):
            (work / "in.json").write_text(json.dumps({"input_data": [row.reshape(-1).tolist()]}))
            call("gen_witness", str(work / "in.json"), str(keys.circuit.compiled), str(work / "w.json"))
            got = json.loads((work / "w.json").read_text())["outputs"][0]
            exact += got == [proofs.field_element(v) for v in want.reshape(-1).tolist()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"setup {setup_s:.1f} s, prove {prove_s:.1f} s, peak {peak:.0f} MB, "
        f"proof {len(bytes.fromhex(document['proof']['hex_proof'][2:]))} B, own verifier "
        f"{evm['own_bytes']} B and {_gas(evm['own_gas'])} gas, reusable verifier {_gas(evm['reusable_gas'])} gas, "
        f"witness == infer on {exact}/{len(x)}"
    )


if __name__ == "__main__":
    main()
