"""A small GPT-2 trained here (byte-level BPE, torch) on the built-in corpus, shared by the tests
that need a GPT-2 whose greedy choices mean something (the folder importer's, the ONNX importer's).

Training is seeded and runs once per test session (`trained_gpt2` is cached): nothing is
downloaded.
"""

from __future__ import annotations

import functools

import numpy as np

from aivm_jax.models._char_gpt import load_corpus

VOCAB = 512
WIDTH = 128
CONTEXT = 128
STEPS = 700
WINDOW = 128
LEARNING_RATE = 3e-3


def train_tokenizer(text: str):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``text``; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def gpt2_config(**overrides):
    from transformers import GPT2Config

    settings = dict(
        n_layer=2,
        n_embd=WIDTH,
        n_head=4,
        n_positions=CONTEXT,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2Config(**{**settings, **overrides})


@functools.cache
def trained_gpt2():
    """``(model, tokenizer)``: a 2-layer ``GPT2LMHeadModel`` trained briefly on the built-in corpus
    (eval mode). Callers must not change the model."""
    import torch
    from transformers import GPT2LMHeadModel

    _, train_text, _ = load_corpus()
    tokenizer = train_tokenizer(train_text)
    assert tokenizer.get_vocab_size() == VOCAB
    ids = np.array(tokenizer.encode(train_text).ids)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = GPT2LMHeadModel(gpt2_config())
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.1)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LEARNING_RATE, total_steps=STEPS, pct_start=0.1
        )
        rng = np.random.default_rng(0)
        model.train()
        for _ in range(STEPS):
            starts = rng.integers(0, len(ids) - WINDOW, 16)
            batch = torch.tensor(np.stack([ids[s : s + WINDOW] for s in starts]))
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tokenizer


def heldout_windows(tokenizer, count: int = 24, length: int = CONTEXT) -> np.ndarray:
    """``(count, length)`` token windows spread evenly over the held-out text."""
    _, _, heldout = load_corpus()
    ids = np.array(tokenizer.encode(heldout).ids, np.int32)
    starts = np.linspace(0, len(ids) - length, count).astype(int)
    return np.stack([ids[s : s + length] for s in starts])
