"""char-gpt: the integer AIVM program vs the same float model in JAX (full-sequence logits).

    .venv/bin/python benchmarks/char_gpt_throughput.py [--repeats N]

Windows of held-out text per second, on the same token ids, at batch 1, 32
and 256 (windows of 128 characters; batch 1 also at 16). "aivm jit" is the
compiled integer program as `infer` runs it, as a prefill: token ids,
positions and masks in with an empty key/value cache, int32 logits (and the
new cache) out; "float jax" is `char_gpt_float_logits`, the float model the
program was quantized from, jitted. Both compute logits for every position.
No onnxruntime peer: the model is written in JAX, and no exporter from JAX
to ONNX is among this project's dependencies. Ratios are AIVM / float
(> 1: the AIVM is faster). Training the float model takes about two minutes.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import numpy as np
from _timing import machine_line, median_seconds

import aivm_jax  # noqa: F401  (determinism flags before JAX starts)
from aivm_jax.models._char_gpt import (
    char_gpt_float_logits,
    heldout_windows,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params, vocab = train_char_gpt()
    program = quantize_char_gpt(params, vocab)
    entry = _compiled_for(program)
    float_fn = jax.jit(char_gpt_float_logits)
    windows = heldout_windows(vocab, count=256, length=128)
    print(f"{machine_line()}; engine: {kernel_status()}")
    print("windows per second")
    header = f"{'batch':>5s} {'tokens':>6s} {'float jax':>10s} {'aivm jit':>9s} {'vs jax':>7s}"
    print(header)
    print("-" * len(header))
    for batch, tokens in [(1, 16), (1, 128), (32, 128), (256, 128)]:
        ids = windows[:batch, :tokens].astype(np.int32)
        feeds = _prefill_feeds(program, ids)
        float_rate = batch / median_seconds(args.repeats, partial(float_fn, params, ids), warmup=2)
        aivm_rate = batch / median_seconds(args.repeats, partial(entry.run_local, feeds), warmup=2)
        print(f"{batch:5d} {tokens:6d} {float_rate:10.1f} {aivm_rate:9.1f} {aivm_rate / float_rate:6.2f}x")


if __name__ == "__main__":
    main()
