"""all-MiniLM-L6-v2: the integer AIVM program vs the float model in JAX vs sentence-transformers (torch, CPU).

    .venv/bin/python benchmarks/minilm_throughput.py [--repeats N]

Sentences per second for 32 short sentences (the 20 fidelity sentences and
12 more, 9-18 tokens), 32 texts of exactly 128 tokens, one short sentence
alone (batch 1) and 256 short sentences (batch 256).
Every contender runs in this process on the same token ids, after warm-up
(median of N timed calls):

* aivm jit: the compiled integer program alone (ids in, pooled int32 out);
* aivm embed: the full `aivm_jax.embed` call (tokenize, pad to a 16-token
  bucket, checks, row hashes, normalization);
* float jax: the same model in float32 JAX (`minilm_float_embed`, jit);
* sentence-transformers: `SentenceTransformer.encode` on torch CPU, when the
  optional benchmark extra is installed (`pip install -e '.[bench]'`);
* ort qdq: onnxruntime on the same model quantized: the float model with
  mean pooling exported to ONNX (torch's TorchScript exporter), then
  `quantize_static` (QDQ, int8 per-channel weights and int8 activations on
  every MatMul, calibrated on the 64 calibration sentences); ids and mask in,
  pooled float out. Its worst cosine to the float embedding is printed.

Ratios are sentences/s of the AIVM divided by the peer's; > 1 means the AIVM is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
from _ort_qdq import export_torch, qdq_session
from _timing import machine_line, median_seconds

import aivm_jax
from aivm_jax.models import build
from aivm_jax.models._char_gpt import CORPUS
from aivm_jax.models._minilm import (
    CALIBRATION_SENTENCES,
    load_minilm_tokenizer,
    load_minilm_weights,
    minilm_float_embed,
    minilm_source,
    tokenize_batch,
)
from aivm_jax.ops._vnni import kernel_status
from aivm_jax.runtime._infer import _compiled_for

VISIBLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_visible.json"


def _workloads(tokenizer):
    short = json.loads(VISIBLE.read_text())["sentences"] + list(CALIBRATION_SENTENCES[:12])
    text = CORPUS.read_text()
    words = text.split()
    long_texts = []
    for i in range(32):  # 32 passages cut to 128 tokens ([CLS] + 126 + [SEP])
        chunk = " ".join(words[i * 400 : i * 400 + 300])
        token_ids = tokenizer.encode(chunk).ids[:127]
        long_texts.append(tokenizer.decode(token_ids[1:]))
    one = short[:1]
    many = [short[i % len(short)] for i in range(256)]
    return {"short": short, "128 tokens": long_texts, "1 sentence": one, "256 short": many}


def _sentence_transformers():
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return SentenceTransformer(str(minilm_source()), device="cpu")


def _ort_qdq_session(st_model, tokenizer):
    """onnxruntime session of the float model quantized to QDQ int8, and its worst cosine; None without it."""
    try:
        import numpy as np
        import torch
    except ImportError:
        return None

    class Pooled(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    ids, mask = tokenize_batch(tokenizer, list(CALIBRATION_SENTENCES))
    ids, mask = ids.astype(np.int64), mask.astype(np.int64)
    model = Pooled(st_model[0].auto_model.eval())
    example = (torch.tensor(ids[:2]), torch.tensor(mask[:2]))
    session = qdq_session(
        lambda path: export_torch(model, example, path, ["ids", "mask"], "embedding"),
        [{"ids": ids[i : i + 1], "mask": mask[i : i + 1]} for i in range(len(ids))],
        op_types=["MatMul", "Gemm"],
    )
    if session is None:
        return None
    got = session.run(None, {"ids": ids, "mask": mask})[0]
    with torch.no_grad():
        want = model(torch.tensor(ids), torch.tensor(mask)).numpy()
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return session, float(cosine.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--program", type=Path, help="a built minilm-l6 .aivm (default: build it now)")
    args = parser.parse_args()
    program = aivm_jax.load(args.program) if args.program else build("minilm-l6")
    tokenizer = load_minilm_tokenizer()
    weights = {k: jnp.asarray(v) for k, v in load_minilm_weights().items() if k != "embeddings.position_ids"}
    float_fn = jax.jit(lambda ids, mask: minilm_float_embed(weights, ids, mask, xp=jnp))
    entry = _compiled_for(program)
    st_model = _sentence_transformers()
    qdq = _ort_qdq_session(st_model, tokenizer) if st_model is not None else None
    print(f"{machine_line()}; model {program.model_id[:18]}...; engine: {kernel_status()}")
    if qdq is not None:
        print(f"ort qdq: worst cosine to the float model on the calibration sentences {qdq[1]:.4f}")
    header = (
        f"{'workload':11s} {'batch':>5s} {'tokens':>6s} {'float jax':>10s} {'s-t torch':>10s} {'ort qdq':>8s} {'aivm jit':>9s} "
        f"{'vs jax':>7s} {'vs s-t':>7s} {'vs ort':>7s} {'aivm embed':>11s} {'vs jax':>7s} {'vs ort':>7s}"
    )
    print("sentences per second")
    print(header)
    print("-" * len(header))
    for workload, texts in _workloads(tokenizer).items():
        ids, mask = tokenize_batch(tokenizer, texts)
        feeds = {"input_ids": jax.device_put(ids), "attention_mask": jax.device_put(mask)}
        n, repeats = len(texts), args.repeats
        rate = {
            "jax": n / median_seconds(repeats, partial(float_fn, ids, mask), warmup=2, min_seconds=1.0),
            "jit": n / median_seconds(repeats, partial(entry.run_local, feeds), warmup=2, min_seconds=1.0),
            "embed": n
            / median_seconds(repeats, partial(aivm_jax.embed, program, texts), warmup=2, min_seconds=1.0),
        }
        if st_model is not None:
            st_model.max_seq_length = ids.shape[1]
            rate["st"] = n / median_seconds(
                repeats, partial(st_model.encode, texts, batch_size=32), warmup=2, min_seconds=1.0
            )
        if qdq is not None:
            ort_feeds = {"ids": ids.astype("int64"), "mask": mask.astype("int64")}
            rate["ort"] = n / median_seconds(
                repeats, partial(qdq[0].run, None, ort_feeds), warmup=2, min_seconds=1.0
            )
        st, ort_rate = rate.get("st"), rate.get("ort")

        def ratio(a, b):
            return f"{a / b:6.2f}x" if b else "    n/a"

        print(
            f"{workload:11s} {len(texts):5d} {ids.shape[1]:6d} {rate['jax']:10.1f} {st or float('nan'):10.1f} "
            f"{ort_rate or float('nan'):8.1f} {rate['jit']:9.1f} {ratio(rate['jit'], rate['jax'])} "
            f"{ratio(rate['jit'], st)} {ratio(rate['jit'], ort_rate)} {rate['embed']:11.1f} "
            f"{ratio(rate['embed'], rate['jax'])} {ratio(rate['embed'], ort_rate)}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB (every contender)")
    if st_model is None:
        print("sentence-transformers not installed: pip install -e '.[bench]' to compare with it")


if __name__ == "__main__":
    main()
