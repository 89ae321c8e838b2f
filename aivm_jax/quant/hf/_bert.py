"""BERT-family encoders from a Hugging Face folder into integer sentence-encoder programs.

The folder holds ``config.json`` (``model_type`` bert), ``model.safetensors``
(or shards named by ``model.safetensors.index.json``) and ``tokenizer.json``;
a sentence-transformers folder adds ``modules.json``, ``1_Pooling/config.json``
and ``sentence_bert_config.json``. Read with ``safetensors`` and
``tokenizers``: no torch, nothing downloaded.

The program (what `aivm_jax.embed` runs):

* inputs ``input_ids`` int32 ``(T,)`` in ``[0, vocab_size - 1]`` and
  ``attention_mask`` int8 ``(T,)`` in ``[0, 1]``, ``T`` variable up to
  ``max_tokens``;
* output ``embedding`` int32 ``(hidden_size,)``: the mean over the real tokens
  of the last hidden state, at a fixed scale. The host divides by its norm (the
  scale cancels, so none is stored), which is what sentence-transformers returns.

Layout of one encoder layer (post-LN BERT), all integers:
``x8 = requantize(h)``; ``q, k, v = requantize(x8 W + b)``; masked integer
attention; ``h = layer_norm(h + ctx Wo)``; ``f = gelu_table(requantize(x8 W1))``;
``h = layer_norm(h + f W2)``. The residual stream is int32 (about 22
significant bits), matmul inputs are int8 with SmoothQuant-balanced per-channel
scales. Calibration runs the program's own integer ops on the calibration
sentences; the fidelity report compares the pooled output with the float model
(`bert_float_embed`, NumPy, off the inference path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax.program import Program, ValueSpec
from aivm_jax.quant._graph import GraphBuilder
from aivm_jax.quant.hf._folder import HfImportError

__all__ = [
    "CALIBRATION_TEXTS",
    "SMOOTHING",
    "BertShape",
    "bert_float_embed",
    "bert_shape",
    "import_bert",
    "load_bert_weights",
    "load_tokenizer",
    "read_pooling",
    "tokenize_batch",
]

SMOOTHING = 0.8
"""SmoothQuant's migration strength ``alpha`` for the int8 inputs of every matmul."""

CALIBRATION_TEXTS = (
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
"""Built-in calibration text: general English (52 sentences), none of it from the fidelity test sets."""

_POOLING = "mean over attention_mask, then L2 normalization on the host"
_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertShape:
    """What the importer reads from a BERT ``config.json``.

    Invariants (checked by `bert_shape`): every size is a positive int,
    ``hidden % heads == 0``, ``eps > 0``, the activation is erf GELU and the
    position embeddings are absolute.
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Every weight the encoder reads, by its BERT name, with its shape (torch layout)."""
        h, i = self.hidden, self.intermediate
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.vocab, h),
            "embeddings.position_embeddings.weight": (self.max_positions, h),
            "embeddings.token_type_embeddings.weight": (self.type_vocab, h),
            "embeddings.LayerNorm.weight": (h,),
            "embeddings.LayerNorm.bias": (h,),
        }
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            for name, out, inp in (
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ):
                shapes[p + name + ".weight"] = (out, inp)
                shapes[p + name + ".bias"] = (out,)
            for name in ("attention.output.LayerNorm", "output.LayerNorm"):
                shapes[p + name + ".weight"] = (h,)
                shapes[p + name + ".bias"] = (h,)
        return shapes


def bert_shape(config: Mapping[str, Any]) -> BertShape:
    """Check a BERT ``config.json`` (as a dict) and read its sizes.

    Raises:
      HfImportError: a size missing or not a positive integer, heads that do not
        divide the width, an activation other than ``gelu``, relative position
        embeddings, a decoder.
    """

    def size(key: str, default: int | None = None) -> int:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HfImportError(f"config.json: {key} must be a positive integer, got {value!r}")
        return value

    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise HfImportError(
            f"config.json: hidden_act {act!r} is not supported; supported: 'gelu' (the exact erf GELU)"
        )
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise HfImportError(
            f"config.json: position_embedding_type {position!r} is not supported; supported: 'absolute'"
        )
    if config.get("is_decoder"):
        raise HfImportError("config.json: is_decoder is true; only BERT encoders are supported")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise HfImportError(f"config.json: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    shape = BertShape(
        layers=size("num_hidden_layers"),
        hidden=size("hidden_size"),
        heads=size("num_attention_heads"),
        intermediate=size("intermediate_size"),
        vocab=size("vocab_size"),
        max_positions=size("max_position_embeddings"),
        type_vocab=size("type_vocab_size", 2),
        eps=float(eps),
    )
    if shape.hidden % shape.heads:
        raise HfImportError(
            f"config.json: hidden_size {shape.hidden} is not a multiple of num_attention_heads {shape.heads}"
        )
    return shape


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise HfImportError(f"{index} is not a readable shard index: {error}") from None
    if (folder / "pytorch_model.bin").is_file():
        raise HfImportError(
            f"{folder} has pytorch_model.bin but no model.safetensors; save the model with "
            "`model.save_pretrained(folder)` (safetensors) and import again"
        )
    raise HfImportError(f"{folder} has no model.safetensors: the model's weights are missing")


def _bert_name(name: str) -> str:
    """A checkpoint's tensor name as `BertModel` names it (no ``bert.`` prefix, no gamma/beta)."""
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def load_bert_weights(folder: Path, shape: BertShape) -> dict[str, np.ndarray]:
    """The encoder's float32 weights by their `BertModel` names, checked against ``shape``.

    Heads and poolers in the checkpoint (``pooler.*``, ``cls.*``) are ignored.

    Raises:
      HfImportError: no safetensors weights, an unreadable file, missing tensors,
        a shape that disagrees with the config, encoder layers beyond
        ``num_hidden_layers``, a non-finite value.
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    found: dict[str, np.ndarray] = {}
    for path in _weight_files(folder):
        if not path.is_file():
            raise HfImportError(f"{path} (named by the shard index) is missing")
        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own and builtin errors
            raise HfImportError(f"cannot read {path} as safetensors: {error}") from None
        for name, array in tensors.items():
            found[_bert_name(name)] = array
    expected = shape.tensors()
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise HfImportError(
            f"{folder}: weights missing from the checkpoint: {', '.join(missing[:3])}{more} "
            f"({len(expected)} expected for a {shape.layers}-layer BERT)"
        )
    extra = sorted({int(m.group(1)) for n in found if (m := re.match(r"encoder\.layer\.(\d+)\.", n))})
    if extra and extra[-1] >= shape.layers:
        raise HfImportError(
            f"{folder}: the weights hold encoder layer {extra[-1]}, but config.json says "
            f"num_hidden_layers {shape.layers}"
        )
    weights = {}
    for name, want in expected.items():
        array = found[name]
        if tuple(array.shape) != want:
            raise HfImportError(
                f"{folder}: {name} has shape {tuple(array.shape)}, config.json implies {want}"
            )
        if array.dtype.kind != "f":
            raise HfImportError(f"{folder}: {name} has dtype {array.dtype}; float weights expected")
        array = array if array.dtype == np.float32 else array.astype(np.float32)
        if not np.isfinite(array).all():
            raise HfImportError(f"{folder}: {name} holds NaN or infinite values")
        weights[name] = array
    return weights


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise HfImportError(f"{path} is not readable JSON: {error}") from None


def read_pooling(folder: Path, hidden: int) -> str:
    """The folder's pooling, checked: mean pooling is the one supported.

    Reads ``modules.json`` (a sentence-transformers folder) or, without it,
    ``1_Pooling/config.json``; a plain Hugging Face folder has neither and gets
    mean pooling. Returns the description stored in the program's metadata.

    Raises:
      HfImportError: another pooling mode, a module other than Transformer,
        Pooling and Normalize, no Pooling module (or its config) in ``modules.json``,
        a pooling width other than ``hidden``.
    """
    folder = Path(folder)
    pooling_dir = folder / "1_Pooling"
    if (folder / "modules.json").is_file():
        modules = _read_json(folder / "modules.json")
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise HfImportError(f"{folder / 'modules.json'} must be a list of modules")
        others = [f"{m.get('type')} ({m.get('path')})" for m in modules if m.get("type") not in _MODULES]
        if others:
            raise HfImportError(
                f"{folder / 'modules.json'}: module {others[0]} is not supported; supported: a "
                "Transformer, mean Pooling and Normalize"
            )
        pools = [m for m in modules if m.get("type") == "sentence_transformers.models.Pooling"]
        if not pools:
            raise HfImportError(
                f"{folder / 'modules.json'} has no Pooling module: the model returns token "
                "embeddings, not one per sentence; add mean pooling (1_Pooling/config.json)"
            )
        pooling_dir = folder / str(pools[0].get("path", ""))
        if not (pooling_dir / "config.json").is_file():
            raise HfImportError(f"{pooling_dir / 'config.json'} (the Pooling module's config) is missing")
    elif not (pooling_dir / "config.json").is_file():
        return _POOLING
    path = pooling_dir / "config.json"
    config = _read_json(path)
    if not isinstance(config, dict):
        raise HfImportError(f"{path} is not a JSON object")
    modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    if modes != ["pooling_mode_mean_tokens"]:
        raise HfImportError(
            f"{path}: pooling {' + '.join(modes) or '(none)'} is not supported; supported: "
            "pooling_mode_mean_tokens alone (mean pooling)"
        )
    width = config.get("word_embedding_dimension", hidden)
    if width != hidden:
        raise HfImportError(f"{path}: word_embedding_dimension {width} differs from hidden_size {hidden}")
    return _POOLING


def _max_tokens(folder: Path, shape: BertShape, asked: int | None) -> int:
    if asked is None:
        st_config = folder / "sentence_bert_config.json"
        asked = shape.max_positions
        if st_config.is_file():
            config = _read_json(st_config)
            asked = config.get("max_seq_length", asked) if isinstance(config, dict) else asked
    if isinstance(asked, bool) or not isinstance(asked, int) or not 2 <= asked <= shape.max_positions:
        raise HfImportError(
            f"max_tokens must be an integer in [2, {shape.max_positions}] "
            f"(max_position_embeddings), got {asked!r}"
        )
    return asked


def load_tokenizer(config: bytes, max_tokens: int):
    """A ``tokenizers.Tokenizer`` from the bytes of a ``tokenizer.json``: no padding,
    truncation at ``max_tokens`` (special tokens included)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(config.decode())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


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
    multiple of ``multiple_of`` and capped at ``limit``. A text longer than
    ``T`` tokens keeps its first ``T - 1`` tokens and its last one when that is
    a special token (``[SEP]``), as the tokenizer's own truncation does.
    """
    encodings = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encodings)
    t = -(-longest // multiple_of) * multiple_of if length is None else length
    t = t if limit is None else min(t, limit)
    ids = np.zeros((len(texts), t), np.int32)
    mask = np.zeros((len(texts), t), np.int8)
    for row, e in enumerate(encodings):
        tokens = list(e.ids)
        if len(tokens) > t:
            tail = tokens[-1:] if e.special_tokens_mask[-1] and t > 1 else []
            tokens = tokens[: t - len(tail)] + tail
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def bert_float_embed(weights, shape: BertShape, input_ids, attention_mask, xp=np):
    """The float model (the peer the integer program is held against): ``(B, T) -> (B, hidden)``.

    ``xp`` is ``numpy`` or ``jax.numpy``; returns mean-pooled, L2-normalized
    embeddings (token type 0, absolute positions ``0 .. T - 1``).
    """
    w = weights
    eps = shape.eps

    def linear(h, name):
        return h @ xp.asarray(w[name + ".weight"]).T + xp.asarray(w[name + ".bias"])

    def norm(h, name):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / xp.sqrt(var + eps) * xp.asarray(w[name + ".weight"]) + xp.asarray(
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
    heads = shape.heads
    dh = shape.hidden // heads
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for layer in range(shape.layers):
        p = f"encoder.layer.{layer}."

        def split(z):
            return z.reshape(batch, t, heads, dh).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + bias
        scores = xp.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, t, shape.hidden)
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


def _texts(texts: Any, what: str) -> tuple[str, ...]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise HfImportError(f"{what} must be a list of sentences, got {type(texts).__name__}")
    texts = tuple(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise HfImportError(f"{what} must be one or more non-empty strings")
    return texts


def _program_name(folder: Path) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.:/-]", "-", folder.resolve().name) or "bert"
    return clean if re.match(r"[A-Za-z_]", clean) else f"bert-{clean}"


def _file_sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def import_bert(
    folder: Path,
    config: Mapping[str, Any],
    *,
    name: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    calibration_texts: Sequence[str] | None = None,
    fidelity_texts: Sequence[str] | None = None,
    max_tokens: int | None = None,
    source: Any = None,
    carry_tokenizer: bool = True,
) -> Program:
    """Import a BERT encoder folder as an integer sentence-encoder program (`aivm_jax.embed` runs it).

    Everything is checked before any work: the config (`bert_shape`), the
    pooling (`read_pooling`), every weight's presence and shape, the tokenizer.
    Then the program is built and calibrated on ``calibration_texts`` (per-channel
    int8 weights, SmoothQuant-balanced int8 activations, int32 residual stream,
    integer layer norm, softmax and GELU tables), and its pooled output compared
    with the float model's (`bert_float_embed`) on ``fidelity_texts``.

    Metadata: ``kind`` ("sentence-embedding"), ``source``, ``tokenizer`` (the folder's
    ``tokenizer.json`` text, which `embed` tokenizes with) and ``tokenizer_sha256``, ``max_tokens``, ``pooling``, ``calibration_sentences``
    (a count) and ``embedding_fidelity`` (cosine to the float model, mean and
    minimum, in parts per million).

    Args:
      folder: the Hugging Face folder; config: its ``config.json`` (``model_type`` bert).
      name: the program's name (default: the folder's name).
      progress: called with a short message before each stage.
      calibration_texts: sentences to calibrate on (default: `CALIBRATION_TEXTS`);
        a few dozen to a few hundred of the kind the model will embed.
      fidelity_texts: held-out sentences for the fidelity report (default: the
        calibration sentences).
      max_tokens: the longest input (default: ``max_seq_length`` of
        ``sentence_bert_config.json``, else ``max_position_embeddings``).
      source: provenance stored as ``metadata["source"]`` (default: the format,
        model type and the SHA-256 of config and weights).
      carry_tokenizer: store the tokenizer in the program (default). The ``minilm-l6`` zoo
        recipe does not, keeping its model id; `embed` then checks the installed package's
        ``tokenizer.json`` against ``tokenizer_sha256``.

    Raises:
      HfImportError: what the folder holds cannot be imported; the message says why.
    """
    folder = Path(folder)
    shape = bert_shape(config)
    pooling = read_pooling(folder, shape.hidden)
    limit = _max_tokens(folder, shape, max_tokens)
    calibration = _texts(
        CALIBRATION_TEXTS if calibration_texts is None else calibration_texts, "calibration texts"
    )
    held = None if fidelity_texts is None else _texts(fidelity_texts, "fidelity texts")
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise HfImportError(
            f"{folder} has no tokenizer.json; save the tokenizer with the model "
            "(`tokenizer.save_pretrained(folder)`, a fast tokenizer)"
        )
    tokenizer_bytes = tokenizer_path.read_bytes()
    try:
        tokenizer = load_tokenizer(tokenizer_bytes, limit)
    except Exception as error:  # tokenizers raises its own exception type
        raise HfImportError(f"{tokenizer_path} is not a tokenizers file: {error}") from None
    if tokenizer.get_vocab_size(with_added_tokens=True) > shape.vocab:
        raise HfImportError(
            f"{tokenizer_path} has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens but "
            f"config.json has vocab_size {shape.vocab}: the tokenizer does not belong to these weights"
        )
    progress("weights")
    weights = load_bert_weights(folder, shape)
    if source is None:
        files = _weight_files(folder)
        source = {
            "format": "huggingface",
            "model_type": "bert",
            "config_sha256": _file_sha256([folder / "config.json"]),
            "weights_sha256": _file_sha256(files),
        }

    ids, mask = tokenize_batch(tokenizer, calibration)
    program, pooled = _build(name or _program_name(folder), shape, weights, ids, mask, limit, progress)
    if held is None:
        progress("fidelity on the calibration sentences")
        dataset = f"the {len(calibration)} calibration sentences"
    else:
        from aivm_jax.runtime import infer

        progress("fidelity on the held-out sentences")
        dataset = f"{len(held)} held-out sentences"
        ids, mask = tokenize_batch(tokenizer, held)
        pooled = infer(program, {"input_ids": ids, "attention_mask": mask}).outputs
    pooled = pooled.astype(np.float64)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = (pooled * bert_float_embed(weights, shape, ids, mask)).sum(axis=1)
    metadata = {
        "kind": "sentence-embedding",
        "source": source,
        **({"tokenizer": tokenizer_bytes.decode("utf-8")} if carry_tokenizer else {}),
        "tokenizer_sha256": hashlib.sha256(tokenizer_bytes).hexdigest(),
        "max_tokens": limit,
        "pooling": pooling,
        "calibration_sentences": len(calibration),
        "embedding_fidelity": {
            "dataset": dataset,
            "mean_cosine_ppm": round(float(cosine.mean()) * 1e6),
            "min_cosine_ppm": round(float(cosine.min()) * 1e6),
        },
    }
    return program.with_metadata(**metadata)


def _build(
    name: str,
    shape: BertShape,
    w: Mapping[str, np.ndarray],
    ids: np.ndarray,
    mask: np.ndarray,
    limit: int,
    progress: Callable[[str], None],
) -> tuple[Program, np.ndarray]:
    """The program (no metadata yet) and its pooled int32 output on the calibration batch."""
    keep = (mask != 0)[:, :, None]
    inputs = (
        ValueSpec(name="input_ids", dtype="int32", shape=(limit,), dynamic=(0,), bounds=(0, shape.vocab - 1)),
        ValueSpec(name="attention_mask", dtype="int8", shape=(limit,), dynamic=(0,), bounds=(0, 1)),
    )
    g = GraphBuilder(name, inputs, {"input_ids": ids, "attention_mask": mask})
    progress("embeddings")
    _embeddings(g, w, shape, keep, limit)
    h = "embeddings.ln"
    for layer in range(shape.layers):
        progress(f"layer {layer + 1}/{shape.layers}")
        h = _encoder_layer(g, w, shape, layer, h, keep)
    g.op("mean_pool", [h, "attention_mask"], "embedding", g.scales[h])
    outputs = (ValueSpec(name="embedding", dtype="int32", shape=(shape.hidden,)),)
    return g.program(outputs, {}), g.value("embedding")


def _embeddings(g: GraphBuilder, w, shape: BertShape, keep, limit: int) -> None:
    words = g.embedding_table("embeddings.words", w["embeddings.word_embeddings.weight"])
    positions = g.embedding_table("embeddings.positions", w["embeddings.position_embeddings.weight"][:limit])
    g.op("gather", ["input_ids", words], "embeddings.word", g.scales[words])
    g.op("iota", ["input_ids"], "embeddings.position_ids")
    g.op("gather", ["embeddings.position_ids", positions], "embeddings.position", g.scales[positions])
    total = g.add("embeddings.word", "embeddings.position", "embeddings.sum", keep=keep)
    token_type = np.round(w["embeddings.token_type_embeddings.weight"][0] / g.scales[total]).astype(np.int32)
    g.param("embeddings.token_type", token_type)
    g.op("bias_add", [total, "embeddings.token_type"], "embeddings.with_type", g.scales[total])
    _norm(g, w, shape, "embeddings.with_type", "embeddings.LayerNorm", "embeddings.ln")


def _norm(g: GraphBuilder, w, shape: BertShape, x: str, weight_name: str, output: str) -> str:
    return g.layer_norm(x, w[weight_name + ".weight"], w[weight_name + ".bias"], shape.eps, output)


def _encoder_layer(g: GraphBuilder, w, shape: BertShape, layer: int, h: str, keep) -> str:
    p = f"encoder.layer.{layer}."
    n = f"layer{layer}."
    qkv = [w[p + f"attention.self.{part}.weight"].T for part in ("query", "key", "value")]
    x8 = g.smoothed_input(h, qkv, n + "x8", keep=keep, alpha=SMOOTHING)
    heads = {}
    for part in ("query", "key", "value"):
        name = p + f"attention.self.{part}"
        acc = g.linear(x8, w[name + ".weight"].T, w[name + ".bias"], n + part)
        q8 = g.requantize(acc, n + part + "8", keep=keep)
        heads[part] = g.heads(q8, shape.heads, n + part + ".heads")
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
    h1 = _norm(g, w, shape, r1, p + "attention.output.LayerNorm", n + "ln1")
    name = p + "intermediate.dense"
    x8 = g.smoothed_input(h1, [w[name + ".weight"].T], n + "ffn_in8", keep=keep, alpha=SMOOTHING)
    inner = g.linear(x8, w[name + ".weight"].T, w[name + ".bias"], n + "ffn_up")
    act = g.gelu(inner, n + "ffn_up8", n + "gelu", keep=keep)
    name = p + "output.dense"
    act8 = g.smoothed_input(act, [w[name + ".weight"].T], n + "gelu8", keep=keep, alpha=SMOOTHING)
    out = g.linear(act8, w[name + ".weight"].T, w[name + ".bias"], n + "ffn_down")
    r2 = g.add(out, h1, n + "residual2", keep=keep)
    return _norm(g, w, shape, r2, p + "output.LayerNorm", n + "ln2")
