"""GPT-2-family decoders (``model_type`` gpt2) into integer programs with a KV cache.

The folder holds ``config.json``, ``model.safetensors`` (or shards named by
``model.safetensors.index.json``) and ``tokenizer.json``. GPT-2's layout:
pre-LN blocks, learned positions ``wpe``, ``Conv1D`` weights stored as
``(in, out)`` (so ``y = x @ W + b`` with no transpose), one fused ``c_attn``
``(D, 3D)`` for queries, keys and values, tanh GELU (``gelu_new``) and the
head tied to the token embedding (``logits = ln_f(x) @ wte.T``).

The program has char-gpt's interface (`aivm_jax.models._char_gpt`), so
`aivm_jax.generate` drives it: inputs ``tokens`` / ``positions`` int32
``(T,)``, ``new_mask`` int8 ``(T,)``, ``past_mask`` int8 ``(C,)`` and per
layer ``past_k.L`` / ``past_v.L`` int8 ``(H, C, dh)`` (``T`` new tokens and
``C`` cached ones, each up to the context); outputs ``next_token`` int32
``(T,)`` (the in-program greedy choice), ``logits`` int32 ``(T, V)`` at one
scale (``metadata["logit_scale_ppb"]``) and ``new_k.L`` / ``new_v.L``. The
folder's ``tokenizer.json`` travels in the program's metadata (and so in its
model id): the tokens a prompt becomes are part of what the program means.

Calibration: windows of text tokenized by the folder's tokenizer (the built-in
corpus of `aivm_jax.models._char_gpt`, or the caller's text). Fidelity: the
held-out tenth of that text, integer program vs the float model computed here
in NumPy from the same weights (float32, off the inference path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.program import Program, ValueSpec
from aivm_jax.quant._graph import GELU_FLOOR, GraphBuilder
from aivm_jax.quant.hf._folder import HfImportError

__all__ = [
    "GPT2_ACTIVATIONS",
    "Gpt2Config",
    "gpt2_fidelity",
    "gpt2_float_logits",
    "gpt2_program",
    "import_gpt2",
    "read_gpt2_weights",
]

GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
"""Activations imported: both names are the tanh GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""

SMOOTHING = 0.8
"""SmoothQuant's alpha for every matmul input (as char-gpt)."""

_CONTEXT_STEP = 64
_WINDOW = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gpt2Config:
    """The parts of a GPT-2 ``config.json`` the program depends on.

    Attributes:
      layers / width / heads: ``n_layer`` / ``n_embd`` / ``n_head``.
      positions: ``n_positions`` (rows of ``wpe``; the longest sequence).
      vocab: ``vocab_size`` (rows of ``wte``).
      inner: the MLP width (``n_inner``, default ``4 * n_embd``).
      eps: ``layer_norm_epsilon``.
      tied: ``tie_word_embeddings`` (the head is ``wte.T``; else ``lm_head.weight``).
    """

    layers: int
    width: int
    heads: int
    positions: int
    vocab: int
    inner: int
    eps: float
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], folder: Path) -> Gpt2Config:
        """Check a GPT-2 ``config.json`` and keep what the program needs.

        Raises:
          HfImportError: an option this importer does not implement (one line, naming it).
        """
        where = f"{folder}/config.json"
        activation = config.get("activation_function", "gelu_new")
        if activation not in GPT2_ACTIVATIONS:
            raise HfImportError(
                f"{where}: activation_function {activation!r} is not supported; "
                f"GPT-2 folders must use {' or '.join(GPT2_ACTIVATIONS)} (tanh GELU)"
            )
        refused = {
            "add_cross_attention": (True, "cross-attention (encoder-decoder use)"),
            "scale_attn_weights": (False, "unscaled attention scores"),
            "scale_attn_by_inverse_layer_idx": (True, "attention scaled by the inverse layer index"),
        }
        for key, (bad, what) in refused.items():
            if config.get(key, not bad) == bad:
                raise HfImportError(f"{where}: {key}={json.dumps(bad)} ({what}) is not supported")

        def positive(key: str, *alternatives: str) -> int:
            for k in (key, *alternatives):
                value = config.get(k)
                if value is not None:
                    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                        raise HfImportError(f"{where}: {k} must be a positive integer, got {value!r}")
                    return value
            raise HfImportError(f"{where} has no {key}; is it a GPT-2 config?")

        width, heads = positive("n_embd", "hidden_size"), positive("n_head", "num_attention_heads")
        if width % heads:
            raise HfImportError(f"{where}: n_embd {width} is not a multiple of n_head {heads}")
        eps = config.get("layer_norm_epsilon", 1e-5)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise HfImportError(f"{where}: layer_norm_epsilon must be a number in (0, 1), got {eps!r}")
        inner = config.get("n_inner")
        return cls(
            layers=positive("n_layer", "num_hidden_layers"),
            width=width,
            heads=heads,
            positions=positive("n_positions", "n_ctx"),
            vocab=positive("vocab_size"),
            inner=positive("n_inner") if inner is not None else 4 * width,
            eps=float(eps),
            tied=bool(config.get("tie_word_embeddings", True)),
        )

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight name (``transformer.`` prefix removed) -> shape, for every weight the program uses."""
        d, f = self.width, self.inner
        shapes: dict[str, tuple[int, ...]] = {
            "wte.weight": (self.vocab, d),
            "wpe.weight": (self.positions, d),
            "ln_f.weight": (d,),
            "ln_f.bias": (d,),
        }
        for i in range(self.layers):
            for name, shape in {
                "ln_1.weight": (d,),
                "ln_1.bias": (d,),
                "attn.c_attn.weight": (d, 3 * d),  # Conv1D: (in, out)
                "attn.c_attn.bias": (3 * d,),
                "attn.c_proj.weight": (d, d),
                "attn.c_proj.bias": (d,),
                "ln_2.weight": (d,),
                "ln_2.bias": (d,),
                "mlp.c_fc.weight": (d, f),
                "mlp.c_fc.bias": (f,),
                "mlp.c_proj.weight": (f, d),
                "mlp.c_proj.bias": (d,),
            }.items():
                shapes[f"h.{i}.{name}"] = shape
        if not self.tied:
            shapes["lm_head.weight"] = (self.vocab, d)  # nn.Linear: (out, in)
        return shapes


# ---------------------------------------------------------------------- folder


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise HfImportError(f"{index} is not a readable safetensors index: {error}") from None
    raise HfImportError(
        f"{folder} has no model.safetensors; save the model with save_pretrained "
        "(safetensors is its default) or convert pytorch_model.bin to safetensors"
    )


def read_gpt2_weights(folder: Path, cfg: Gpt2Config) -> dict[str, np.ndarray]:
    """The folder's weights as float32 arrays, by name without the ``transformer.`` prefix.

    Raises:
      HfImportError: unreadable files, or weights missing or of the wrong shape for the config.
    """
    from safetensors import SafetensorError, safe_open

    wanted = cfg.weight_shapes()
    weights: dict[str, np.ndarray] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for key in handle.keys():
                    name = key.removeprefix("transformer.")
                    if name in wanted:
                        weights[name] = np.asarray(handle.get_tensor(key), dtype=np.float32)
        except FileNotFoundError:
            raise HfImportError(f"{path} is missing (named by model.safetensors.index.json)") from None
        except (SafetensorError, OSError, ValueError, TypeError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HfImportError(f"{path} is not a readable safetensors file: {message}") from None
    missing = [name for name in wanted if name not in weights]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise HfImportError(f"{folder}: the weights lack {len(missing)} tensor(s) the config needs: {shown}")
    for name, shape in wanted.items():
        if weights[name].shape != shape:
            raise HfImportError(
                f"{folder}: weight {name} has shape {weights[name].shape}, the config implies {shape}"
            )
    return weights


def _read_tokenizer(folder: Path, cfg: Gpt2Config) -> str:
    path = folder / "tokenizer.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HfImportError(
            f"{folder} has no tokenizer.json; `aivm generate` needs the model's fast tokenizer "
            "(save it with tokenizer.save_pretrained or tokenizers' Tokenizer.save)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise HfImportError(f"{path} is not readable: {error}") from None
    tokenizer = _tokenizer(text, path)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab:
        raise HfImportError(f"{path} has {size} tokens, more than the model's vocab_size {cfg.vocab}")
    return text


def _eos(config: Mapping[str, Any], cfg: Gpt2Config) -> dict[str, int]:
    """``{"eos_token_id": id}`` where ``config.json`` names one inside the vocabulary (GPT-2's
    ``<|endoftext|>``): `generate` ends a row there. A list (several end tokens) keeps the first."""
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if isinstance(eos, int) and not isinstance(eos, bool) and 0 <= eos < cfg.vocab:
        return {"eos_token_id": eos}
    return {}


def _tokenizer(text: str, where: Any):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises its own Exception subclass
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HfImportError(f"{where} is not a tokenizers tokenizer.json: {message}") from None


# ---------------------------------------------------------------- float model


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's ``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * gamma + beta


def _head_weight(weights: Mapping[str, np.ndarray], cfg: Gpt2Config) -> np.ndarray:
    """The head as ``(D, V)``: ``wte.T`` when tied, else ``lm_head.weight.T``."""
    return (weights["wte.weight"] if cfg.tied else weights["lm_head.weight"]).T


def gpt2_float_logits(weights: Mapping[str, np.ndarray], cfg: Gpt2Config, tokens: np.ndarray) -> np.ndarray:
    """The float model in NumPy (float32): int tokens ``(B, T)`` -> logits ``(B, T, V)``, causal.

    Positions are ``0 .. T-1``; as ``GPT2LMHeadModel`` in eval mode (no dropout).
    """
    b, t = tokens.shape
    dh, w = cfg.head_dim, weights
    x = w["wte.weight"][tokens] + w["wpe.weight"][:t]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.layers):
        p = f"h.{i}."
        h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], cfg.eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (z.reshape(b, t, cfg.heads, dh).transpose(0, 2, 1, 3) for z in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(dh)), -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, cfg.width)
        x = x + ctx @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], cfg.eps)
        up = _gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + up @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    h = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], cfg.eps)
    return (h @ _head_weight(weights, cfg)).astype(np.float32)


# ------------------------------------------------------------------- program


def _input_specs(cfg: Gpt2Config, context: int) -> tuple[ValueSpec, ...]:
    seq = dict(shape=(context,), dynamic=(0,))
    specs = [
        ValueSpec(name="tokens", dtype="int32", bounds=(0, cfg.vocab - 1), **seq),
        ValueSpec(name="positions", dtype="int32", bounds=(0, context - 1), **seq),
        ValueSpec(name="new_mask", dtype="int8", bounds=(0, 1), **seq),
        ValueSpec(name="past_mask", dtype="int8", bounds=(0, 1), **seq),
    ]
    for layer in range(cfg.layers):
        for part in ("k", "v"):
            specs.append(
                ValueSpec(
                    name=f"past_{part}.{layer}",
                    dtype="int8",
                    shape=(cfg.heads, context, cfg.head_dim),
                    dynamic=(1,),
                )
            )
    return tuple(specs)


def _output_specs(cfg: Gpt2Config, context: int) -> tuple[ValueSpec, ...]:
    specs = [
        ValueSpec(name="next_token", dtype="int32", shape=(context,), dynamic=(0,)),
        ValueSpec(name="logits", dtype="int32", shape=(context, cfg.vocab), dynamic=(0,)),
    ]
    for layer in range(cfg.layers):
        for part in ("k", "v"):
            specs.append(
                ValueSpec(
                    name=f"new_{part}.{layer}",
                    dtype="int8",
                    shape=(cfg.heads, context, cfg.head_dim),
                    dynamic=(1,),
                )
            )
    return tuple(specs)


def _prefill_feeds(cfg: Gpt2Config, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for whole windows ``(B, T)`` with an empty cache (one masked slot)."""
    b, t = tokens.shape
    feeds = {
        "tokens": np.asarray(tokens, np.int32),
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
        "new_mask": np.ones((b, t), np.int8),
        "past_mask": np.zeros((b, 1), np.int8),
    }
    for layer in range(cfg.layers):
        for part in ("k", "v"):
            feeds[f"past_{part}.{layer}"] = np.zeros((b, cfg.heads, 1, cfg.head_dim), np.int8)
    return feeds


def _tanh_gelu(g: GraphBuilder, x: str, int8_name: str, output: str) -> str:
    """tanh GELU of int32 ``x``: int8 over ``[-max(4, ...), max]``, then a 256-entry int32 table."""
    real = g.real(x)
    x8 = g.requantize(x, int8_name, scale=max(real.max(), min(-real.min(), GELU_FLOOR)) / 127.0)
    return g.table(x8, _gelu_tanh, output, out_dtype="int32")


class _Widened:
    """``weights[name]`` as float64, widened when read (one layer's worth at a time, not 1 GB at once)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = weights

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self.weights[name], np.float64)


def _build_graph(
    weights: Mapping[str, np.ndarray], cfg: Gpt2Config, calibration: np.ndarray, name: str, progress
) -> tuple[GraphBuilder, list[tuple[str, str]]]:
    """Append the whole decoder to a `GraphBuilder` calibrated on ``calibration`` ``(B, T)`` tokens."""
    w = _Widened(weights)
    b, t = calibration.shape
    d = cfg.width
    g = GraphBuilder(name, _input_specs(cfg, cfg.positions), _prefill_feeds(cfg, calibration))
    keep = np.ones((b, t, 1), bool)
    g.embedding_table("wte", w["wte.weight"])
    g.embedding_table("wpe", w["wpe.weight"])
    g.op("gather", ["tokens", "wte"], "tok_emb", g.scales["wte"])
    g.op("gather", ["positions", "wpe"], "pos_emb", g.scales["wpe"])
    x = g.add("tok_emb", "pos_emb", "x0", keep=keep)
    g.op("concat", ["past_mask", "new_mask"], "key_mask", axis=1)
    cache_outputs = []
    for layer in range(cfg.layers):
        progress(f"quantizing layer {layer + 1}/{cfg.layers}")
        p, n = f"h.{layer}.", f"layer{layer}."
        h = g.layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], cfg.eps, n + "ln1")
        qkv_w, qkv_b = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]
        parts = {c: (qkv_w[:, i * d : (i + 1) * d], qkv_b[i * d : (i + 1) * d]) for i, c in enumerate("qkv")}
        x8 = g.smoothed_input(h, [qkv_w], n + "x8", keep=keep, alpha=SMOOTHING)
        heads = {}
        for c, (wc, bc) in parts.items():
            acc = g.linear(x8, wc, bc, n + c)
            heads[c] = g.heads(g.requantize(acc, n + c + "8", keep=keep), cfg.heads, n + c + ".heads")
        for c in "kv":
            g.scales[f"past_{c}.{layer}"] = g.scales[heads[c]]
            g.op("concat", [f"past_{c}.{layer}", heads[c]], n + c + ".all", g.scales[heads[c]], axis=2)
        ctx = g.attention(
            heads["q"], n + "k.all", n + "v.all", "key_mask", n + "ctx", causal=True, keep=keep[:, None]
        )
        attn = g.linear(
            g.merge_heads(ctx, n + "ctx.merged"),
            w[p + "attn.c_proj.weight"],
            w[p + "attn.c_proj.bias"],
            n + "attn_out",
        )
        x = g.add(x, attn, n + "residual1", keep=keep)
        h = g.layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], cfg.eps, n + "ln2")
        x8 = g.smoothed_input(h, [w[p + "mlp.c_fc.weight"]], n + "ffn_in8", keep=keep, alpha=SMOOTHING)
        up = g.linear(x8, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"], n + "up")
        act = _tanh_gelu(g, up, n + "up8", n + "gelu")
        act8 = g.smoothed_input(act, [w[p + "mlp.c_proj.weight"]], n + "gelu8", keep=keep, alpha=SMOOTHING)
        down = g.linear(act8, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"], n + "down")
        x = g.add(x, down, n + "residual2", keep=keep)
        cache_outputs += [(f"new_k.{layer}", heads["k"]), (f"new_v.{layer}", heads["v"])]
        for done in [v for v in g.values if v.startswith(n) and v not in (x, heads["k"], heads["v"])]:
            del g.values[done]  # calibration values no later node reads: GPT-2 small's are ~250 MB a layer
    progress("quantizing the head")
    h = g.layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], cfg.eps, "ln_f")
    head = np.asarray(_head_weight(weights, cfg), np.float64)
    x8 = g.smoothed_input(h, [head], "head_in8", keep=keep, alpha=SMOOTHING)
    acc = g.linear(x8, head, np.zeros(cfg.vocab), "head")
    acc_values = g.value(acc).reshape(-1, cfg.vocab)  # max |real| per channel, without a float copy of it all
    top = float((np.maximum(acc_values.max(0), -acc_values.min(0).astype(np.int64)) * g.scales[acc]).max())
    g.requantize(
        acc, "logits", out_dtype="int32", scale=max(top, 1e-8) / 2**20
    )  # one scale: argmax is meaningful
    g.op("argmax", ["logits"], "next_token", axis=-1)
    for output, source in cache_outputs:
        g.op("reshape", [source], output, g.scales[source], shape=(cfg.heads, -1, cfg.head_dim))
    return g, cache_outputs


def _program_at(g: GraphBuilder, cfg: Gpt2Config, context: int, metadata: Mapping[str, Any]) -> Program:
    return Program(
        name=g.name,
        inputs=_input_specs(cfg, context),
        outputs=_output_specs(cfg, context),
        nodes=tuple(g.nodes),
        params=g.params,
        metadata={**metadata, "context": context},
    )


def _fit_context(g: GraphBuilder, cfg: Gpt2Config, context: int | None, metadata) -> Program:
    """The program at ``context``, or, when None, at the longest context (``n_positions``, else a
    multiple of 64 below it) that the opset's resource bounds accept."""
    if context is not None:
        if not isinstance(context, int) or isinstance(context, bool) or not 1 <= context <= cfg.positions:
            raise HfImportError(
                f"context must be an integer in 1..{cfg.positions} (n_positions), got {context!r}"
            )
        try:
            return _program_at(g, cfg, context, metadata)
        except ProgramError as error:
            raise HfImportError(f"at context {context}: {error}; pass a smaller context") from None
    try:
        return _program_at(g, cfg, cfg.positions, metadata)
    except ProgramError as error:
        last: ProgramError = error
    low, high = 0, (cfg.positions - 1) // _CONTEXT_STEP  # in steps; high is known not to fit, or untried
    best = None
    while low < high:  # the largest multiple of 64 that fits: work and memory grow with the context
        mid = (low + high + 1) // 2
        try:
            best = _program_at(g, cfg, mid * _CONTEXT_STEP, metadata)
            low = mid
        except ProgramError as error:
            last, high = error, mid - 1
    if low == 0:
        raise HfImportError(f"the model does not fit the opset's bounds even at a context of 64: {last}")
    if best is None or best.metadata["context"] != low * _CONTEXT_STEP:
        best = _program_at(g, cfg, low * _CONTEXT_STEP, metadata)
    return best


def gpt2_program(
    weights: Mapping[str, np.ndarray],
    cfg: Gpt2Config,
    calibration: np.ndarray,
    *,
    name: str,
    context: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Program:
    """The integer decoder program of GPT-2 ``weights``, calibrated on int ``(B, T)`` token windows.

    Args:
      context: the longest sequence (cache plus new tokens) the program takes; default:
        ``n_positions``, or the largest multiple of 64 under it within the opset's bounds.
      metadata: stored in the program (JSON, no floats), besides what this adds.
    """
    g, _ = _build_graph(weights, cfg, np.asarray(calibration, np.int32), name, progress)
    g.values.clear()  # the calibration activations (about 1 GB at GPT-2 small's shape) are done with
    meta = {
        "kind": "causal-lm",
        "layers": cfg.layers,
        "logit_scale_ppb": round(float(g.scales["logits"]) * 1e9),
        **(metadata or {}),
    }
    return _fit_context(g, cfg, context, meta)


def gpt2_fidelity(
    program: Program, weights: Mapping[str, np.ndarray], cfg: Gpt2Config, windows: np.ndarray
) -> dict[str, int]:
    """Next-token agreement and perplexity, integer program vs float model, on ``(B, T)`` windows.

    Returns integers (metadata holds no floats): ``heldout_tokens``, ``agreement_ppm``,
    ``float_perplexity_ppm``, ``int_perplexity_ppm``, ``perplexity_ratio_ppm``.
    """
    from aivm_jax.runtime import infer

    windows = np.asarray(windows, np.int32)
    scale = program.metadata["logit_scale_ppb"] / 1e9
    agree, float_nll, int_nll = 0, [], []
    for start in range(0, len(windows), _FIDELITY_CHUNK):  # chunks bound the (B, T, V) float copies
        chunk = windows[start : start + _FIDELITY_CHUNK]
        result = infer(program, _prefill_feeds(cfg, chunk))
        float_logits = gpt2_float_logits(weights, cfg, chunk)
        agree += int((result.named_outputs["next_token"] == float_logits.argmax(-1)).sum())
        float_nll.append(_token_nll(float_logits, chunk))
        int_nll.append(_token_nll(result.named_outputs["logits"].astype(np.float64) * scale, chunk))
    f, i = float(np.concatenate(float_nll).mean()), float(np.concatenate(int_nll).mean())
    return {
        "heldout_tokens": int(windows.size),
        "agreement_ppm": round(agree / windows.size * 1e6),
        "float_perplexity_ppm": round(math.exp(f) * 1e6),
        "int_perplexity_ppm": round(math.exp(i) * 1e6),
        "perplexity_ratio_ppm": round(math.exp(i - f) * 1e6),
    }


_FIDELITY_CHUNK = 4


def _token_nll(logits: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (float64) of each next token ``windows[:, 1:]`` under ``logits[:, :-1]``."""
    logits = np.asarray(logits[:, :-1], np.float64)
    top = logits.max(-1, keepdims=True)
    logz = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    return (logz - np.take_along_axis(logits, windows[:, 1:, None].astype(np.int64), -1)[..., 0]).ravel()


# -------------------------------------------------------------------- import


def _windows(ids: np.ndarray, count: int, length: int, seed: int | None) -> np.ndarray:
    """``(count, length)`` windows of ``ids``: random starts (seeded) or evenly spaced (``seed=None``)."""
    length = min(length, len(ids))
    if seed is None:
        starts = np.linspace(0, len(ids) - length, count).astype(int)
    else:
        starts = np.random.default_rng(seed).integers(0, len(ids) - length + 1, count)
    return np.stack([ids[s : s + length] for s in starts]).astype(np.int32)


def import_gpt2(
    folder: Path,
    config: Mapping[str, Any],
    *,
    name: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    context: int | None = None,
    calibration_texts: Sequence[str] | None = None,
    calibration_windows: int = 16,
    fidelity_windows: int = 16,
    window: int = _WINDOW,
) -> Program:
    """Import a GPT-2-family folder as an int8 decoder program with a KV cache and a fidelity report.

    Args:
      folder / config: the folder and its parsed ``config.json`` (`import_folder` passes both).
      name: the program's name (default: the folder's name).
      context: the longest sequence the program takes (default: see `gpt2_program`).
      calibration_texts: text to calibrate on, as lines (joined with newlines; `aivm import
        --calibration TEXTS.txt` passes the file's lines): the first 90% calibrates, the last 10%
        measures fidelity; default: the built-in corpus (the Python language reference).
      calibration_windows / fidelity_windows: windows of ``window`` tokens for each.

    Returns:
      The program; ``metadata["lm_fidelity"]`` compares it with the float model,
      ``metadata["tokenizer"]`` holds the folder's ``tokenizer.json``.

    Raises:
      HfImportError: an unsupported config, missing or mismatched weights, no tokenizer.json,
        too little calibration text.
    """
    folder = Path(folder)
    cfg = Gpt2Config.from_hf(config, folder)
    for key, value in (("calibration_windows", calibration_windows), ("fidelity_windows", fidelity_windows)):
        if not isinstance(value, int) or value < 1:
            raise HfImportError(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(window, int) or window < 2:
        raise HfImportError(f"window must be an integer >= 2, got {window!r}")
    tokenizer_text = _read_tokenizer(folder, cfg)
    progress(f"reading weights ({cfg.layers} layers, width {cfg.width}, vocab {cfg.vocab})")
    weights = read_gpt2_weights(folder, cfg)
    tokenizer = _tokenizer(tokenizer_text, folder / "tokenizer.json")
    if calibration_texts is None:
        from aivm_jax.models._char_gpt import CORPUS, load_corpus

        _, train_text, heldout_text = load_corpus()
        dataset = f"{CORPUS.name} (built-in; calibration: first 90%, fidelity: last 10%)"
    else:
        text = calibration_texts if isinstance(calibration_texts, str) else "\n".join(calibration_texts)
        split = int(len(text) * 0.9)
        train_text, heldout_text = text[:split], text[split:]
        dataset = "the given calibration text (calibration: first 90%, fidelity: last 10%)"
    length = min(window, context or cfg.positions)
    train_ids = np.array(tokenizer.encode(train_text).ids, np.int32)
    heldout_ids = np.array(tokenizer.encode(heldout_text).ids, np.int32)
    if len(train_ids) < 2 or len(heldout_ids) < 2:
        raise HfImportError(
            f"the calibration text is too short: {len(train_ids)} + {len(heldout_ids)} tokens; "
            "give at least a few paragraphs"
        )
    calibration = _windows(train_ids, calibration_windows, length, seed=0)
    progress(f"calibrating on {calibration.shape[0]} windows of {calibration.shape[1]} tokens")
    program = gpt2_program(
        weights,
        cfg,
        calibration,
        name=name or folder.name,
        context=context,
        progress=progress,
        metadata={
            "source": {
                "model_type": "gpt2",
                "folder": folder.name,
                "layers": cfg.layers,
                "width": cfg.width,
                "heads": cfg.heads,
                "vocab": cfg.vocab,
                "n_positions": cfg.positions,
                "tied": cfg.tied,
            },
            "tokenizer": tokenizer_text,
            "tokenizer_sha256": hashlib.sha256(tokenizer_text.encode("utf-8")).hexdigest(),
            "calibration": dataset,
            **_eos(config, cfg),
        },
    )
    progress(f"context {program.metadata['context']}; measuring fidelity against the float model")
    heldout = _windows(heldout_ids, fidelity_windows, min(window, program.metadata["context"]), seed=None)
    report = gpt2_fidelity(program, weights, cfg, heldout)
    progress(
        f"held-out next-token agreement {report['agreement_ppm'] / 1e4:.2f}%, "
        f"perplexity int/float {report['perplexity_ratio_ppm'] / 1e6:.4f}"
    )
    return program.with_metadata(lm_fidelity=report)
