"""GPT-2-small shape through `aivm import`'s folder path: import, then greedy generation with the KV cache.

    .venv/bin/python benchmarks/gpt2_small.py [--quick] [--vocab 50257] [--new-tokens 32] [--prompt-tokens 32]

No GPT-2 weights ship here, so the folder is made in the run: ``GPT2LMHeadModel``
at GPT-2 small's shape (12 layers, width 768, 12 heads, 1024 positions, tied
head; 124M parameters at vocab 50257) with transformers' own seeded random
initialisation, saved with ``save_pretrained``, next to a byte-level BPE
``tokenizer.json`` trained on the built-in corpus (it reaches about 8.8k
tokens there: generated ids above it decode to nothing). Random weights give
near-uniform logits, so the integer/float agreement printed is a floor, not
the figure a trained model would show (the tests measure that on a trained
small GPT-2).

Each engine runs in its own process (so that each peak RSS is its own): the
import (``import_folder``: weights, calibration, fidelity, save), then the AIVM
program under `aivm_jax.generate` (integer, KV cache, in-program greedy
choice), ``GPT2LMHeadModel.generate`` (torch float32, KV cache, greedy) and
onnxruntime float on the same model exported to ONNX with its KV cache, on the
same prompts, timed in turns (AIVM, transformers, onnxruntime, AIVM, ...; best
of the rounds). Tokens per second: ``batch * N / t(N)``, prefill included;
per-token latency: ``(t(N) - t(1)) / (N - 1)``, the decode step alone. Ratios
are AIVM / peer (> 1: the AIVM is faster). Every engine gets this machine's
cores (torch and onnxruntime intra-op threads = ``os.cpu_count()``).

The ONNX peer: a wrapper module takes ``input_ids``, a 2D ``attention_mask``
over past and new tokens, ``position_ids`` and every layer's past keys and
values as plain tensors, builds a ``DynamicCache`` from them, and returns the
last position's logits and every layer's new keys and values; it is exported by
torch's TorchScript exporter at opset 17 with the batch, new-token and past
axes variable. The model is loaded with ``attn_implementation="eager"`` and the
wrapper passes a 4D additive mask (causal and padding) that it builds itself,
since transformers' own mask builder bakes the traced past length into the
graph. Greedy decoding runs it once on the left-padded prompts with an empty
past, then one token a step; its greedy tokens are checked against
transformers' (the same weights, so they should agree but for float ties).
The llama.cpp peer is not installed on this machine and is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_folder(folder: Path, vocab: int) -> None:
    """GPT-2 small's shape with seeded random weights, and a byte-level BPE tokenizer.json."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    from aivm_jax.models._char_gpt import load_corpus

    _, train_text, _ = load_corpus()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([train_text], trainer)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=vocab, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))


def _prompts(folder: Path, batch: int, length: int) -> list[str]:
    """``batch`` prompts: held-out text windows of ``length`` tokens, as text."""
    from tokenizers import Tokenizer

    from aivm_jax.models._char_gpt import load_corpus

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode(load_corpus()[2]).ids
    step = (len(ids) - length) // batch
    return [tokenizer.decode(ids[i * step : i * step + length]) for i in range(batch)]


# ----------------------------------------------------------------- workers


def _import_role(folder: Path, program_path: Path) -> None:
    import aivm_jax
    from aivm_jax.quant.hf import import_folder

    start = time.perf_counter()
    program = import_folder(folder, progress=lambda m: print(f"  import: {m}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    aivm_jax.save(program, program_path)
    estimate = program.resource_estimate(1)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": _peak_rss_mb(),
                "context": program.metadata["context"],
                "params": program.param_count(),
                "nodes": len(program.nodes),
                "compile_units": estimate.compile_units,
                "file_mb": program_path.stat().st_size / 2**20,
                "fidelity": program.metadata["lm_fidelity"],
            }
        ),
        flush=True,
    )


def _aivm_engine(program_path: Path):
    import aivm_jax

    program = aivm_jax.load(program_path)

    def run(prompts: list[str], count: int):
        return [list(t) for t in aivm_jax.generate(program, prompts, count).tokens]

    return run


def _hf_engine(folder: Path):
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(os.cpu_count() or 1)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def run(prompts: list[str], count: int):
        ids, mask = _left_padded(tokenizer, prompts)
        width = ids.shape[1]
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
        return out[:, width:].tolist()

    return run


def _left_padded(tokenizer, prompts: list[str]):
    """Token ids and mask of ``prompts`` (int64), left-padded with id 0, as decoder-only generation wants."""
    import numpy as np

    rows = [tokenizer.encode(p).ids for p in prompts]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = row
        mask[r, width - len(row) :] = 1
    return ids, mask


def _export_role(folder: Path, onnx_path: Path) -> None:
    """GPT2LMHeadModel with its KV cache as explicit tensors, to ONNX (TorchScript exporter, opset 17)."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.cache_utils import DynamicCache

    torch.set_num_threads(os.cpu_count() or 1)
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    config = model.config
    layers, heads, head_dim = config.n_layer, config.n_head, config.n_embd // config.n_head

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            total, new = attention_mask.shape[1], input_ids.shape[1]
            query = torch.arange(new) + (total - new)
            causal = torch.arange(total)[None, :] <= query[:, None]
            allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
            mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            return (
                out.logits[:, -1],
                *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)),
            )

    past_names = [f"past_{i}_{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present_{i}_{kv}" for i in range(layers) for kv in ("key", "value")]
    axes = {name: {0: "batch", 1: "new"} for name in ("input_ids", "position_ids")}
    axes["attention_mask"] = {0: "batch", 1: "total"}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    axes["logits"] = {0: "batch"}
    batch, past_len, new = 2, 3, 4
    example = (
        torch.randint(0, config.vocab_size, (batch, new)),
        torch.ones(batch, past_len + new, dtype=torch.long),
        torch.arange(past_len, past_len + new)[None].repeat(batch, 1),
        *(torch.zeros(batch, heads, past_len, head_dim) for _ in past_names),
    )
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            Step().eval(), example, str(onnx_path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names], dynamic_axes=axes,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    report = {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "file_mb": onnx_path.stat().st_size / 2**20}
    print(json.dumps(report), flush=True)


def _ort_engine(folder: Path, onnx_path: Path):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_")]
    heads, head_dim = past_inputs[0].shape[1], past_inputs[0].shape[3]

    def run(prompts: list[str], count: int):
        ids, mask = _left_padded(tokenizer, prompts)
        batch = len(prompts)
        positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        past = {i.name: np.zeros((batch, heads, 0, head_dim), np.float32) for i in past_inputs}
        tokens = []
        for _ in range(count):
            logits, *present = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
            )
            ids = logits.argmax(-1)[:, None].astype(np.int64)
            tokens.append(ids[:, 0])
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], 1)
            positions = positions[:, -1:] + 1
            past = dict(zip(past, present))
        return np.stack(tokens, 1).tolist()

    return run


def _generate_role(engine: str, folder: Path, program_path: Path) -> None:
    """Serve ``{"batch": B, "prompts": [...], "count": N}`` lines on stdin: time N tokens and 1 token."""
    if engine == "aivm":
        run = _aivm_engine(program_path)
    elif engine == "ort":
        run = _ort_engine(folder, program_path.with_suffix(".onnx"))
    else:
        run = _hf_engine(folder)
    print(json.dumps({"ready": True, "peak_rss_mb": _peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        prompts, count = request["prompts"], request["count"]
        if request.get("warmup"):
            run(prompts, 1)
            run(prompts, min(count, 3))
        start = time.perf_counter()
        run(prompts, 1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        tokens = run(prompts, count)
        full = time.perf_counter() - start
        print(
            json.dumps({"t1": one, "tn": full, "tokens": tokens, "peak_rss_mb": _peak_rss_mb()}), flush=True
        )


# -------------------------------------------------------------------- main


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(BENCH), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _ask(worker: subprocess.Popen, request: dict) -> dict:
    worker.stdin.write(json.dumps(request) + "\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def _run_role(*args: str) -> dict:
    """Run this script in a one-shot role (import, export) and return the JSON line it prints last."""
    done = subprocess.run([sys.executable, str(BENCH), *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cached(path: Path, artifact: Path, make) -> dict:
    """The report saved at ``path`` by an earlier run with the same ``--workdir`` (if ``artifact``, what
    it made, is still there), or ``make()``'s, saved."""
    if path.is_file() and artifact.is_file():
        return {**json.loads(path.read_text()), "reused": True}
    report = make()
    path.write_text(json.dumps(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="8 new tokens, one round (the shape stays GPT-2 small)"
    )
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 32, quick 8")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None, help="default 2, quick 1")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Keep the folder, program and ONNX file here (and reuse them).",
    )
    parser.add_argument(
        "--role", choices=["import", "export", "aivm", "hf", "ort"], default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--program", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "import":
        return _import_role(args.folder, args.program)
    if args.role == "export":
        return _export_role(args.folder, args.program.with_suffix(".onnx"))
    if args.role is not None:
        return _generate_role(args.role, args.folder, args.program)
    n = args.new_tokens or (8 if args.quick else 32)
    rounds = args.rounds or (1 if args.quick else 2)

    sys.path.insert(0, str(BENCH.parent))
    from _timing import machine_line

    import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
    from aivm_jax.ops._vnni import kernel_status

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpt2-small-"))
    workdir.mkdir(parents=True, exist_ok=True)
    folder, program_path = workdir / "gpt2-small", workdir / "gpt2-small.aivm"
    paths = ("--folder", str(folder), "--program", str(program_path))
    print(f"{machine_line()}; engine: {kernel_status()}")
    if not (folder / "model.safetensors").is_file():
        start = time.perf_counter()
        _make_folder(folder, args.vocab)
        print(f"made {folder} (synthetic weights, vocab {args.vocab}) in {time.perf_counter() - start:.0f} s")
    report = _cached(workdir / "import.json", program_path, lambda: _run_role("--role", "import", *paths))
    exported = _cached(
        workdir / "export.json",
        program_path.with_suffix(".onnx"),
        lambda: _run_role("--role", "export", *paths),
    )
    fid = report["fidelity"]
    print(
        f"import: {report['seconds']:.0f} s, peak RSS {report['peak_rss_mb']:.0f} MB; {report['params'] / 1e6:.1f}M "
        f"int params, {report['nodes']} nodes, {report['compile_units']} compile units, file "
        f"{report['file_mb']:.0f} MB; context {report['context']} (of 1024: the longest multiple of 64 "
        "within the opset's work bound)"
        + (" [from an earlier run in this workdir]" if "reused" in report else "")
    )
    print(
        f"fidelity on {fid['heldout_tokens']} held-out tokens (random weights): next-token agreement "
        f"{fid['agreement_ppm'] / 1e4:.2f}%, perplexity int/float {fid['perplexity_ratio_ppm'] / 1e6:.4f}"
    )
    print(
        f"onnx export (KV cache as inputs and outputs, opset 17): {exported['seconds']:.0f} s, peak RSS "
        f"{exported['peak_rss_mb']:.0f} MB, file {exported['file_mb']:.0f} MB"
        + (" [from an earlier run in this workdir]" if "reused" in exported else "")
    )
    prompts = _prompts(folder, 8, args.prompt_tokens)
    engines = ("aivm", "hf", "ort")
    workers = {name: _spawn("--role", name, *paths) for name in engines}
    for worker in workers.values():
        json.loads(worker.stdout.readline())
    rows = []
    for batch in (1, 8):
        best: dict[str, dict] = {}
        for round_ in range(rounds):
            for name, worker in workers.items():
                got = _ask(worker, {"prompts": prompts[:batch], "count": n, "warmup": round_ == 0})
                if name not in best or got["tn"] < best[name]["tn"]:
                    best[name] = got
        rows.append((batch, best))
    peaks = {
        name: _ask(w, {"prompts": prompts[:1], "count": 1})["peak_rss_mb"] for name, w in workers.items()
    }
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()

    def same(a: dict, b: dict) -> int:
        return sum(x == y for ra, rb in zip(a["tokens"], b["tokens"]) for x, y in zip(ra, rb))

    print(f"greedy generation, {args.prompt_tokens}-token prompts, {n} new tokens, KV cache on every engine")
    header = (
        f"{'batch':>5s} {'aivm tok/s':>10s} {'hf tok/s':>9s} {'ort tok/s':>9s} {'vs hf':>6s} {'vs ort':>6s} "
        f"{'aivm ms/tok':>11s} {'hf ms/tok':>9s} {'ort ms/tok':>10s} {'vs hf':>6s} {'vs ort':>6s} "
        f"{'aivm=hf':>11s} {'ort=hf':>11s}"
    )
    print(header)
    print("-" * len(header))
    steps = min(4, n)
    for batch, best in rows:
        rate = {name: batch * n / best[name]["tn"] for name in engines}
        lat = {name: (best[name]["tn"] - best[name]["t1"]) / (n - 1) * 1e3 for name in engines}
        agree = {name: f"{same(best[name], best['hf'])}/{batch * n}" for name in ("aivm", "ort")}
        print(
            f"{batch:5d} {rate['aivm']:10.1f} {rate['hf']:9.1f} {rate['ort']:9.1f} "
            f"{rate['aivm'] / rate['hf']:5.2f}x {rate['aivm'] / rate['ort']:5.2f}x {lat['aivm']:11.1f} "
            f"{lat['hf']:9.1f} {lat['ort']:10.1f} {lat['hf'] / lat['aivm']:5.2f}x {lat['ort'] / lat['aivm']:5.2f}x "
            f"{agree['aivm']:>11s} {agree['ort']:>11s}"
        )
        first = all(o[:steps] == h[:steps] for o, h in zip(best["ort"]["tokens"], best["hf"]["tokens"]))
        print(
            f"      sanity, batch {batch}: onnxruntime's first {steps} greedy tokens equal transformers' on every "
            f"row: {'yes' if first else 'NO (the exported graph differs from the model)'}"
        )
    machine_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(
        f"peak RSS: aivm generate {peaks['aivm']:.0f} MB, transformers {peaks['hf']:.0f} MB, onnxruntime "
        f"{peaks['ort']:.0f} MB, aivm import {report['peak_rss_mb']:.0f} MB, onnx export "
        f"{exported['peak_rss_mb']:.0f} MB (machine: {machine_gb:.0f} GB)"
    )
    print("llama.cpp: not installed here; not measured")


if __name__ == "__main__":
    main()
