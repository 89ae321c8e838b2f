"""char-gpt: the integer AIVM program vs the same float model in JAX and in onnxruntime QDQ int8.

    .venv/bin/python benchmarks/char_gpt_throughput.py [--repeats N]

Windows of held-out text per second, on the same token ids, at batch 1, 32
and 256 (windows of 128 characters; batch 1 also at 16). "aivm jit" is the
compiled integer program as `infer` runs it, as a prefill: token ids,
positions and masks in with an empty key/value cache, int32 logits (and the
new cache) out; "float jax" is `char_gpt_float_logits`, the float model the
program was quantized from, jitted; "ort qdq" is onnxruntime on the same
float weights written as a torch module (same ops: pre-LN blocks, erf GELU,
causal softmax), exported to ONNX with torch's TorchScript exporter and
quantized with `quantize_static` (QDQ, int8 per-channel weights and int8
activations on every MatMul, calibrated on 16 training windows); it needs the
benchmark extra (`pip install -e '.[bench]'`). All compute logits for every
position. Ratios are AIVM / peer (> 1: the AIVM is faster). Training the
float model takes about two minutes.
"""

from __future__ import annotations

import argparse
import resource
from functools import partial

import jax
import numpy as np
from _ort_qdq import export_torch, qdq_session
from _timing import machine_line, median_seconds

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.models._char_gpt import (
    CharGPTConfig,
    char_gpt_float_logits,
    encode,
    heldout_windows,
    load_corpus,
    quantize_char_gpt,
    train_char_gpt,
)
from aivm_jax.ops._vnni import kernel_status
from aivm_jax.runtime._infer import _compiled_for


def _prefill_feeds(program, ids: np.ndarray) -> dict[str, jax.Array]:
    """The feeds `aivm_jax.text.generate` gives a prompt: positions 0..T-1, an empty cache of one masked slot."""
    batch, tokens = ids.shape
    feeds = {
        "tokens": ids,
        "positions": np.broadcast_to(np.arange(tokens, dtype=np.int32), ids.shape).copy(),
        "new_mask": np.ones(ids.shape, np.int8),
        "past_mask": np.zeros((batch, 1), np.int8),
    }
    for spec in program.inputs:
        if spec.name.startswith("past_") and spec.name != "past_mask":
            heads, _, width = spec.shape
            feeds[spec.name] = np.zeros((batch, heads, 1, width), np.int8)
    return {name: jax.device_put(value) for name, value in feeds.items()}


def _torch_char_gpt(params, cfg=CharGPTConfig):
    """The float model as a torch module (tokens int64 (B, T) -> logits (B, T, V)), same weights and ops."""
    import torch
    import torch.nn.functional as F

    weights = jax.tree.map(lambda a: torch.tensor(np.asarray(a, np.float32)), params)

    class CharGPT(torch.nn.Module):
        def forward(self, tokens):
            t = tokens.shape[1]
            dh = cfg.width // cfg.heads
            x = weights["wte"][tokens] + weights["wpe"][:t]
            causal = torch.tril(torch.ones(t, t, dtype=torch.bool))

            def norm(z, p):
                return F.layer_norm(z, (cfg.width,), p["g"], p["b"], eps=1e-5)

            def dense(z, p):
                return z @ p["w"] + p["b"]

            def split(z):
                return z.reshape(z.shape[0], t, cfg.heads, dh).transpose(1, 2)

            for p in weights["layers"]:
                h = norm(x, p["ln1"])
                q, k, v = (split(dense(h, p[n])) for n in ("q", "k", "v"))
                scores = (q @ k.transpose(2, 3) / dh**0.5).masked_fill(~causal, -1e9)
                ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
                x = x + dense(ctx, p["o"])
                x = x + dense(F.gelu(dense(norm(x, p["ln2"]), p["up"])), p["down"])
            return dense(norm(x, weights["ln_f"]), weights["head"])

    return CharGPT().eval()


def _ort_qdq_session(params, vocab):
    """onnxruntime session of the float model quantized to QDQ int8; None without the benchmark extra."""
    try:
        import torch
    except ImportError:
        return None
    _, train_text, _ = load_corpus()
    data = encode(vocab, train_text)
    calibration = [data[s : s + 128][None].astype(np.int64) for s in range(0, 16 * 9973, 9973)]
    model = _torch_char_gpt(params)
    example = (torch.tensor(calibration[0]),)
    return qdq_session(
        lambda path: export_torch(model, example, path, ["tokens"], "logits"),
        [{"tokens": window} for window in calibration],
        op_types=["MatMul", "Gemm"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params, vocab = train_char_gpt()
    program = quantize_char_gpt(params, vocab)
    entry = _compiled_for(program)
    float_fn = jax.jit(char_gpt_float_logits)
    ort = _ort_qdq_session(params, vocab)
    windows = heldout_windows(vocab, count=256, length=128)
    print(f"{machine_line()}; engine: {kernel_status()}")
    if ort is not None:
        ids = windows[:32].astype(np.int64)
        agree = ort.run(None, {"tokens": ids})[0].argmax(-1) == np.asarray(float_fn(params, ids)).argmax(-1)
        print(f"ort qdq: greedy next-character agreement with the float model {agree.mean():.1%}")
    print("windows per second")
    header = (
        f"{'batch':>5s} {'tokens':>6s} {'float jax':>10s} {'ort qdq':>9s} {'aivm jit':>9s} {'vs jax':>7s} "
        f"{'vs ort':>7s}"
    )
    print(header)
    print("-" * len(header))
    for batch, tokens in [(1, 16), (1, 128), (32, 128), (256, 128)]:
        ids = windows[:batch, :tokens].astype(np.int32)
        feeds = _prefill_feeds(program, ids)
        float_rate = batch / median_seconds(
            args.repeats, partial(float_fn, params, ids), warmup=2, min_seconds=1.0
        )
        aivm_rate = batch / median_seconds(
            args.repeats, partial(entry.run_local, feeds), warmup=2, min_seconds=1.0
        )
        ort_rate = float("nan")
        if ort is not None:
            run = partial(ort.run, None, {"tokens": ids.astype(np.int64)})
            ort_rate = batch / median_seconds(args.repeats, run, warmup=2, min_seconds=1.0)
        print(
            f"{batch:5d} {tokens:6d} {float_rate:10.1f} {ort_rate:9.1f} {aivm_rate:9.1f} "
            f"{aivm_rate / float_rate:6.2f}x {aivm_rate / ort_rate:6.2f}x"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB (every contender)")


if __name__ == "__main__":
    main()
