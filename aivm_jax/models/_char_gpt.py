"""char-gpt: a small character-level GPT trained by the project, as an integer program with a KV cache.

Training text: ``data/python_reference.txt``, the Python
language reference that CPython ships as ``pydoc_data.topics`` (PSF license),
frozen here so the recipe does not depend on the Python version. The last 10%
is held out for the fidelity report.

Float model (JAX, seeded): pre-LN GPT, 2 layers, 4 heads of 32, width 128,
MLP 512 with GELU, context 128, learned position embeddings, untied head.

Program inputs (``T`` new tokens, ``C`` cached ones, both variable up to 128):
``tokens`` / ``positions`` int32 ``(T,)``, ``new_mask`` int8 ``(T,)``,
``past_mask`` int8 ``(C,)`` and per layer ``past_k.L`` / ``past_v.L`` int8
``(4, C, 32)``. Outputs: ``next_token`` int32 ``(T,)`` (greedy choice after
each position), ``logits`` int32 ``(T, V)``, and ``new_k.L`` / ``new_v.L``
(the cache entries of the new tokens). Cached keys are used exactly as if
recomputed, and masked slots contribute exactly zero, so generation with or
without the cache gives the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aivm_jax.program import Program, ValueSpec
from aivm_jax.quant._graph import GraphBuilder

__all__ = [
    "CharGPTConfig",
    "build_char_gpt",
    "char_gpt_fidelity",
    "char_gpt_float_logits",
    "load_corpus",
    "quantize_char_gpt",
    "train_char_gpt",
]

CORPUS = Path(__file__).parent / "data" / "python_reference.txt"
SMOOTHING = 0.8


class CharGPTConfig:
    """Architecture and training settings (fixed: they are part of the recipe)."""

    width = 128
    heads = 4
    layers = 2
    mlp = 512
    context = 128
    steps = 1500
    batch = 16
    window = 128
    learning_rate = 3e-3
    seed = 0


def load_corpus() -> tuple[str, str, str]:
    """``(vocab, train_text, heldout_text)``; the vocabulary is the sorted character set."""
    text = CORPUS.read_text()
    vocab = "".join(sorted(set(text)))
    split = int(len(text) * 0.9)
    return vocab, text[:split], text[split:]


def encode(vocab: str, text: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab)}
    return np.array([index[c] for c in text], np.int32)


def _init(key, vocab_size: int, cfg=CharGPTConfig):
    def dense(k, n_in, n_out):
        return {"w": jax.random.normal(k, (n_in, n_out)) * (1.0 / math.sqrt(n_in)), "b": jnp.zeros(n_out)}

    def norm(n):
        return {"g": jnp.ones(n), "b": jnp.zeros(n)}

    keys = iter(jax.random.split(key, 4 + 6 * cfg.layers))
    params = {
        "wte": jax.random.normal(next(keys), (vocab_size, cfg.width)) * 0.1,
        "wpe": jax.random.normal(next(keys), (cfg.context, cfg.width)) * 0.02,
        "ln_f": norm(cfg.width),
        "head": dense(next(keys), cfg.width, vocab_size),
        "layers": [],
    }
    for _ in range(cfg.layers):
        params["layers"].append(
            {
                "ln1": norm(cfg.width),
                "q": dense(next(keys), cfg.width, cfg.width),
                "k": dense(next(keys), cfg.width, cfg.width),
                "v": dense(next(keys), cfg.width, cfg.width),
                "o": dense(next(keys), cfg.width, cfg.width),
                "ln2": norm(cfg.width),
                "up": dense(next(keys), cfg.width, cfg.mlp),
                "down": dense(next(keys), cfg.mlp, cfg.width),
            }
        )
    return params


_EPS = 1e-5


def _ln(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + _EPS) * p["g"] + p["b"]


def char_gpt_float_logits(params, tokens, cfg=CharGPTConfig):
    """The float model: int tokens ``(B, T)`` -> logits ``(B, T, V)`` (causal)."""
    b, t = tokens.shape
    dh = cfg.width // cfg.heads
    x = params["wte"][tokens] + params["wpe"][:t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for p in params["layers"]:
        h = _ln(x, p["ln1"])

        def split(z):
            return z.reshape(b, t, cfg.heads, dh).transpose(0, 2, 1, 3)

        q, k, v = (split(h @ p[n]["w"] + p[n]["b"]) for n in ("q", "k", "v"))
        scores = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh), -1e9)
        ctx = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(b, t, cfg.width)
        x = x + ctx @ p["o"]["w"] + p["o"]["b"]
        h = _ln(x, p["ln2"])
        x = (
            x
            + jax.nn.gelu(h @ p["up"]["w"] + p["up"]["b"], approximate=False) @ p["down"]["w"]
            + p["down"]["b"]
        )
    return _ln(x, params["ln_f"]) @ params["head"]["w"] + params["head"]["b"]


def train_char_gpt(progress: Callable[[str], None] = lambda _: None, cfg=CharGPTConfig):
    """Train the float model (seeded, CPU, about two minutes); return ``(params, vocab)``.

    The result is kept for the life of the process (training is deterministic),
    so a build followed by a fidelity check trains once.
    """
    if cfg not in _trained:
        # optax relies on standard promotion; do not depend on the caller's global setting.
        with jax.numpy_dtype_promotion("standard"):
            _trained[cfg] = _train(progress, cfg)
    return _trained[cfg]


_trained: dict[type, tuple[dict, str]] = {}


def _train(progress, cfg):
    import optax

    vocab, train_text, _ = load_corpus()
    data = encode(vocab, train_text)
    params = _init(jax.random.PRNGKey(cfg.seed), len(vocab), cfg)
    optimizer = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, 100, cfg.steps), weight_decay=0.1
    )
    state = optimizer.init(params)

    def loss_fn(p, x, y):
        logits = char_gpt_float_logits(p, x, cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.steps):
        starts = rng.integers(0, len(data) - cfg.window - 1, cfg.batch)
        x = np.stack([data[s : s + cfg.window] for s in starts])
        y = np.stack([data[s + 1 : s + cfg.window + 1] for s in starts])
        params, state, loss = step(params, state, x, y)
        if (i + 1) % 250 == 0:
            progress(f"train step {i + 1}/{cfg.steps}: loss {float(loss):.3f}")
    return jax.tree.map(np.asarray, params), vocab


def heldout_windows(vocab: str, count: int = 24, length: int = 128) -> np.ndarray:
    """``(count, length)`` int32 windows of the held-out text, evenly spaced."""
    _, _, heldout = load_corpus()
    data = encode(vocab, heldout)
    starts = np.linspace(0, len(data) - length - 1, count).astype(int)
    return np.stack([data[s : s + length] for s in starts])


def build_char_gpt(progress: Callable[[str], None] = lambda _: None, cfg=CharGPTConfig) -> Program:
    """Train the float model, then quantize it into the ``char-gpt`` program with a fidelity report."""
    params, vocab = train_char_gpt(progress, cfg)
    progress("quantizing")
    program = quantize_char_gpt(params, vocab, cfg)
    report = char_gpt_fidelity(program, params, vocab, cfg)
    progress(
        f"held-out next-char agreement {report['agreement_ppm'] / 1e4:.2f}%, "
        f"perplexity int/float {report['perplexity_ratio_ppm'] / 1e6:.4f}"
    )
    return program.with_metadata(lm_fidelity=report)


def quantize_char_gpt(params, vocab: str, cfg=CharGPTConfig) -> Program:
    """The integer program of trained ``params`` (calibrated on 32 training windows)."""
    _, train_text, _ = load_corpus()
    data = encode(vocab, train_text)
    rng = np.random.default_rng(cfg.seed + 1)
    starts = rng.integers(0, len(data) - cfg.context, 32)
    tokens = np.stack([data[s : s + cfg.context] for s in starts])
    b, t, dh = tokens.shape[0], tokens.shape[1], cfg.width // cfg.heads
    feeds = {
        "tokens": tokens,
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
        "new_mask": np.ones((b, t), np.int8),
        "past_mask": np.zeros((b, 1), np.int8),
    }
    seq = dict(dtype="int32", shape=(cfg.context,), dynamic=(0,))
    inputs = [
        ValueSpec(name="tokens", bounds=(0, len(vocab) - 1), **seq),
        ValueSpec(name="positions", bounds=(0, cfg.context - 1), **seq),
        ValueSpec(name="new_mask", dtype="int8", shape=(cfg.context,), dynamic=(0,), bounds=(0, 1)),
        ValueSpec(name="past_mask", dtype="int8", shape=(cfg.context,), dynamic=(0,), bounds=(0, 1)),
    ]
    for layer in range(cfg.layers):
        for part in ("k", "v"):
            name = f"past_{part}.{layer}"
            inputs.append(
                ValueSpec(name=name, dtype="int8", shape=(cfg.heads, cfg.context, dh), dynamic=(1,))
            )
            feeds[name] = np.zeros((b, cfg.heads, 1, dh), np.int8)
    g = GraphBuilder("char-gpt", tuple(inputs), feeds)
    keep = np.ones((b, t, 1), bool)
    g.embedding_table("wte", params["wte"])
    g.embedding_table("wpe", params["wpe"])
    g.op("gather", ["tokens", "wte"], "tok_emb", g.scales["wte"])
    g.op("gather", ["positions", "wpe"], "pos_emb", g.scales["wpe"])
    x = g.add("tok_emb", "pos_emb", "x0", keep=keep)
    g.op("concat", ["past_mask", "new_mask"], "key_mask", axis=1)
    outputs = []
    for layer, p in enumerate(params["layers"]):
        n = f"layer{layer}."
        h = _norm(g, x, p["ln1"], n + "ln1")
        x8 = g.smoothed_input(h, [p[c]["w"] for c in "qkv"], n + "x8", keep=keep, alpha=SMOOTHING)
        heads = {}
        for c in "qkv":
            acc = g.linear(x8, p[c]["w"], p[c]["b"], n + c)
            heads[c] = g.heads(g.requantize(acc, n + c + "8", keep=keep), cfg.heads, n + c + ".heads")
        for c in "kv":
            g.scales[f"past_{c}.{layer}"] = g.scales[heads[c]]
            g.op("concat", [f"past_{c}.{layer}", heads[c]], n + c + ".all", g.scales[heads[c]], axis=2)
        ctx = g.attention(
            heads["q"], n + "k.all", n + "v.all", "key_mask", n + "ctx", causal=True, keep=keep[:, None]
        )
        attn = g.linear(g.merge_heads(ctx, n + "ctx.merged"), p["o"]["w"], p["o"]["b"], n + "attn_out")
        x = g.add(x, attn, n + "residual1", keep=keep)
        h = _norm(g, x, p["ln2"], n + "ln2")
        x8 = g.smoothed_input(h, [p["up"]["w"]], n + "ffn_in8", keep=keep, alpha=SMOOTHING)
        up = g.linear(x8, p["up"]["w"], p["up"]["b"], n + "up")
        act = g.gelu(up, n + "up8", n + "gelu")
        act8 = g.smoothed_input(act, [p["down"]["w"]], n + "gelu8", keep=keep, alpha=SMOOTHING)
        down = g.linear(act8, p["down"]["w"], p["down"]["b"], n + "down")
        x = g.add(x, down, n + "residual2", keep=keep)
        outputs += [(f"new_k.{layer}", heads["k"]), (f"new_v.{layer}", heads["v"])]
    h = _norm(g, x, params["ln_f"], "ln_f")
    x8 = g.smoothed_input(h, [params["head"]["w"]], "head_in8", keep=keep, alpha=SMOOTHING)
    acc = g.linear(x8, params["head"]["w"], params["head"]["b"], "head")
    real = np.abs(g.real(acc)).max()
    g.requantize(acc, "logits", out_dtype="int32", scale=real / 2**20)  # one scale: argmax is meaningful
    g.op("argmax", ["logits"], "next_token", axis=-1)
    for name, source in outputs:
        g.op("reshape", [source], name, g.scales[source], shape=(cfg.heads, -1, dh))
    seq_out = dict(shape=(cfg.context,), dynamic=(0,))
    specs = [
        ValueSpec(name="next_token", dtype="int32", **seq_out),
        ValueSpec(name="logits", dtype="int32", shape=(cfg.context, len(vocab)), dynamic=(0,)),
    ] + [
        ValueSpec(name=name, dtype="int8", shape=(cfg.heads, cfg.context, dh), dynamic=(1,))
        for name, _ in outputs
    ]
    metadata = {
        "kind": "char-lm",
        "vocab": vocab,
        "context": cfg.context,
        "layers": cfg.layers,
        "logit_scale_ppb": round(float(g.scales["logits"]) * 1e9),
        "training": f"{cfg.steps} AdamW steps, seed {cfg.seed}, on {CORPUS.name} (first 90%)",
    }
    return g.program(tuple(specs), metadata)


def _norm(g: GraphBuilder, x: str, p, output: str) -> str:
    return g.layer_norm(x, p["g"], p["b"], _EPS, output)


def char_gpt_fidelity(program: Program, params, vocab: str, cfg=CharGPTConfig) -> dict[str, int]:
    """Held-out next-character agreement and perplexity, integer vs float, as integers (ppm)."""
    from aivm_jax.runtime import infer

    windows = heldout_windows(vocab)
    b, t = windows.shape
    dh = cfg.width // cfg.heads
    feeds = {
        "tokens": windows,
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
        "new_mask": np.ones((b, t), np.int8),
        "past_mask": np.zeros((b, 1), np.int8),
        **{
            f"past_{c}.{layer}": np.zeros((b, cfg.heads, 1, dh), np.int8)
            for layer in range(cfg.layers)
            for c in "kv"
        },
    }
    result = infer(program, feeds)
    int_logits = result.named_outputs["logits"].astype(np.float64) * program.metadata["logit_scale_ppb"] / 1e9
    with jax.numpy_dtype_promotion("standard"):
        float_logits = np.asarray(char_gpt_float_logits(params, windows, cfg), np.float64)
    targets = windows[:, 1:]

    def nll(logits):
        logits = logits[:, :-1]
        top = logits.max(-1, keepdims=True)
        logz = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
        return (logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).mean()

    agreement = (result.named_outputs["next_token"] == float_logits.argmax(-1)).mean()
    return {
        "heldout_tokens": int(targets.size),
        "agreement_ppm": round(float(agreement) * 1e6),
        "float_perplexity_ppm": round(math.exp(nll(float_logits)) * 1e6),
        "int_perplexity_ppm": round(math.exp(nll(int_logits)) * 1e6),
        "perplexity_ratio_ppm": round(math.exp(nll(int_logits) - nll(float_logits)) * 1e6),
    }
