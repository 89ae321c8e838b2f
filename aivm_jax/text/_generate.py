"""Greedy text generation with an integer decoder program: ``char-gpt``'s characters, or an
imported GPT-2's tokenizer (`aivm_jax.quant.hf`; its ``tokenizer.json`` travels in the program).

The program picks each next token itself (``next_token`` is an in-program
argmax), so the generated tokens are part of what consensus covers. The host
only moves tokens and cache entries:

* ``cache=True``: one prefill call on the right-padded prompts, then one call
  per new token with the cached keys and values in fixed slots (unused slots
  masked, so one compiled shape serves every step);
* ``cache=False``: every step recomputes the whole prefix.

Both give the same tokens, for a prompt alone or in any batch, on any number
of devices: masked slots contribute exactly zero and integer sums do not
depend on order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aivm_jax._errors import InputDTypeError, InputRangeError, WrongProgramError
from aivm_jax.program import Program, load
from aivm_jax.runtime import infer

__all__ = ["GenerationResult", "generate", "tokens_hash"]

_BUCKET = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """What `generate` returns: per prompt, the generated text, its tokens and their hash."""

    model_id: str
    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    token_hashes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "results": [
                {"prompt": p, "text": t, "tokens": list(k), "tokens_hash": h}
                for p, t, k, h in zip(self.prompts, self.texts, self.tokens, self.token_hashes)
            ],
        }


def tokens_hash(model_id: str, tokens: Sequence[int]) -> str:
    """``SHA-256("aivm-tokens-v1" || model_id || count u32 || tokens int32 little-endian)``."""
    data = struct.pack(f"<I{len(tokens)}i", len(tokens), *tokens)
    return "0x" + hashlib.sha256(b"aivm-tokens-v1" + bytes.fromhex(model_id[2:]) + data).hexdigest()


class _LM:
    def __init__(self, program: Program) -> None:
        meta = program.metadata
        kind = meta.get("kind")
        if kind not in ("char-lm", "causal-lm") or "next_token" not in {s.name for s in program.outputs}:
            raise WrongProgramError(
                f"{program.name} ({program.model_id[:10]}...) is not a language model: "
                "build one with `aivm zoo build char-gpt -o FILE`, or import a GPT-2 folder "
                "with `aivm import MODEL_DIR -o FILE`"
            )
        self.program = program
        self.vocab = meta["vocab"] if kind == "char-lm" else None
        self.tokenizer = _tokenizer(meta["tokenizer"]) if kind == "causal-lm" else None
        self.context = int(meta["context"])
        self.eos = meta.get("eos_token_id")
        self.layers = int(meta["layers"])
        specs = {s.name: s for s in program.inputs}
        self.heads, _, self.head_dim = specs["past_k.0"].shape
        self.vocab_size = specs["tokens"].bounds[1] + 1 if specs["tokens"].bounds else None

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InputDTypeError(f"a prompt must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise InputRangeError("a prompt needs at least one character")
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(prompt).ids
            if not ids:
                raise InputRangeError(f"prompt {prompt[:40]!r} has no tokens; give a longer one")
            if self.vocab_size is not None and max(ids) >= self.vocab_size:
                raise InputRangeError(
                    f"the tokenizer gave token {max(ids)}, outside the model's vocabulary of {self.vocab_size}"
                )
            return ids
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted({c for c in prompt if c not in index})
        if unknown:
            raise InputRangeError(f"prompt has characters outside the model's vocabulary: {unknown!r}")
        return [index[c] for c in prompt]

    def decode(self, tokens: Sequence[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(list(tokens), skip_special_tokens=False)
        return "".join(self.vocab[t] for t in tokens)

    def feeds(self, tokens, positions, new_mask, past_k, past_v, past_mask) -> dict[str, np.ndarray]:
        out = {"tokens": tokens, "positions": positions, "new_mask": new_mask, "past_mask": past_mask}
        for layer in range(self.layers):
            out[f"past_k.{layer}"] = past_k[layer]
            out[f"past_v.{layer}"] = past_v[layer]
        return out

    def empty_cache(self, batch: int, slots: int):
        shape = (batch, self.heads, slots, self.head_dim)
        return (
            [np.zeros(shape, np.int8) for _ in range(self.layers)],
            [np.zeros(shape, np.int8) for _ in range(self.layers)],
            np.zeros((batch, slots), np.int8),
        )


@functools.lru_cache(maxsize=4)
def _tokenizer(text: str) -> Any:
    """A ``tokenizers`` tokenizer from a program's ``tokenizer.json`` text (cached: building one
    from GPT-2's 1.3 MB file takes about 0.1 s)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises its own Exception subclass
        raise WrongProgramError(f"the program's tokenizer does not load: {error}") from None


def _right_padded(rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int8)
    for r, row in enumerate(rows):
        tokens[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return tokens, mask


def generate(
    model: Program | str | os.PathLike,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    cache: bool = True,
    stop_at_eos: bool = True,
    devices: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Greedy decoding of up to ``max_new_tokens`` tokens after each prompt.

    Args:
      model: a decoder program (char-gpt, or an imported GPT-2) or its ``.aivm`` path.
      prompts: one or more non-empty strings (char-gpt: in its character vocabulary; an
        imported model: tokenized by its own tokenizer, carried in the program).
      max_new_tokens: >= 1; prompt plus new tokens must fit the program's context
        (``metadata["context"]``: 128 for char-gpt).
      cache: use the KV cache (default) or recompute the prefix every step.
      stop_at_eos: a program with an end token (``metadata["eos_token_id"]``, an imported
        GPT-2's ``<|endoftext|>``) ends a row at it, the end token included in its tokens;
        decoding stops once every row has ended. False: always ``max_new_tokens`` tokens.
      devices: passed to `infer` (``"all"`` shards the prompts over local devices).
      progress: called with ``(step, max_new_tokens)``.

    Raises:
      WrongProgramError: not a decoder program.
      InputRangeError: empty prompt, unknown character, or too long for the context.
    """
    program = model if isinstance(model, Program) else load(model)
    lm = _LM(program)
    prompts = list(prompts)
    if not prompts:
        raise InputRangeError("generate needs at least one prompt")
    if max_new_tokens < 1:
        raise InputRangeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rows = [lm.encode(p) for p in prompts]
    longest = max(len(r) for r in rows)
    if longest + max_new_tokens > lm.context:
        raise InputRangeError(
            f"prompt ({longest} tokens) plus {max_new_tokens} new tokens exceeds the context of {lm.context}"
        )
    step = _step_with_cache if cache else _step_without_cache
    eos = lm.eos if stop_at_eos else None
    generated = step(lm, rows, max_new_tokens, devices, progress, eos)
    if eos is not None:
        generated = [g[: g.index(eos) + 1] if eos in g else g for g in generated]
    texts = tuple(lm.decode(g) for g in generated)
    return GenerationResult(
        model_id=program.model_id,
        prompts=tuple(prompts),
        texts=texts,
        tokens=tuple(tuple(g) for g in generated),
        token_hashes=tuple(tokens_hash(program.model_id, g) for g in generated),
    )


def _bucket(n: int, limit: int) -> int:
    return min(-(-n // _BUCKET) * _BUCKET, limit)


def _all_ended(generated: Sequence[Sequence[int]], eos: int | None) -> bool:
    return eos is not None and all(eos in g for g in generated)


def _step_without_cache(lm: _LM, rows, count, devices, progress, eos):
    sequences = [list(r) for r in rows]
    batch = len(rows)
    empty_k, empty_v, empty_mask = lm.empty_cache(batch, 1)
    for step in range(count):
        lengths = [len(s) for s in sequences]
        tokens, mask = _right_padded(sequences, _bucket(max(lengths), lm.context))
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape).copy()
        out = infer(
            lm.program, lm.feeds(tokens, positions, mask, empty_k, empty_v, empty_mask), devices=devices
        )
        nxt = out.named_outputs["next_token"]
        for r, seq in enumerate(sequences):
            seq.append(int(nxt[r, lengths[r] - 1]))
        if progress is not None:
            progress(step + 1, count)
        if _all_ended([s[len(r) :] for s, r in zip(sequences, rows)], eos):
            break
    return [s[len(r) :] for s, r in zip(sequences, rows)]


def _step_with_cache(lm: _LM, rows, count, devices, progress, eos):
    batch = len(rows)
    lengths = np.array([len(r) for r in rows])
    tokens, mask = _right_padded(rows, _bucket(int(lengths.max()), lm.context))
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape).copy()
    empty_k, empty_v, empty_mask = lm.empty_cache(batch, 1)
    out = infer(lm.program, lm.feeds(tokens, positions, mask, empty_k, empty_v, empty_mask), devices=devices)
    # The cache: fixed slots 0..context-1; row r's token at position i lives in slot i.
    past_k, past_v, past_mask = lm.empty_cache(batch, lm.context)
    width = tokens.shape[1]
    for layer in range(lm.layers):
        past_k[layer][:, :, :width] = out.named_outputs[f"new_k.{layer}"]
        past_v[layer][:, :, :width] = out.named_outputs[f"new_v.{layer}"]
    past_mask[:, :width] = mask
    last = out.named_outputs["next_token"][np.arange(batch), lengths - 1]
    generated = [[int(t)] for t in last]
    if progress is not None:
        progress(1, count)
    new_mask = np.ones((batch, 1), np.int8)
    rows_index = np.arange(batch)
    for step in range(1, count):
        if _all_ended(generated, eos):
            break
        current = np.array([g[-1] for g in generated], np.int32)[:, None]
        slot = lengths + step - 1  # position of the token being fed
        feeds = lm.feeds(current, slot[:, None].astype(np.int32), new_mask, past_k, past_v, past_mask)
        out = infer(lm.program, feeds, devices=devices)
        for layer in range(lm.layers):
            past_k[layer][rows_index, :, slot] = out.named_outputs[f"new_k.{layer}"][:, :, 0]
            past_v[layer][rows_index, :, slot] = out.named_outputs[f"new_v.{layer}"][:, :, 0]
        past_mask[rows_index, slot] = 1
        for r, token in enumerate(out.named_outputs["next_token"][:, 0]):
            generated[r].append(int(token))
        if progress is not None:
            progress(step + 1, count)
    return generated
