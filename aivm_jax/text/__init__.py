"""Text in, text out: sentence embeddings and greedy generation over integer programs."""

from aivm_jax.text._embed import EmbeddingResult, embed
from aivm_jax.text._generate import GenerationResult, generate, tokens_hash

__all__ = ["EmbeddingResult", "GenerationResult", "embed", "generate", "tokens_hash"]
