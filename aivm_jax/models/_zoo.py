"""The model zoo: named recipes that build AIVM programs reproducibly."""

from __future__ import annotations

from collections.abc import Callable

from aivm_jax._errors import UnknownModelError
from aivm_jax.models._digits import DIGITS_RECIPES, build_digits
from aivm_jax.program import Program

__all__ = ["build", "zoo_models"]

_TRANSFORMERS = {
    "minilm-l6": "all-MiniLM-L6-v2 sentence encoder (real pretrained weights), integer-only, 384-d embeddings",
    "char-gpt": "character-level GPT (2 layers, width 128) trained here on the Python reference, KV cache",
}


def zoo_models() -> dict[str, str]:
    """Zoo model name -> one-line description."""
    return {**{name: recipe.description for name, recipe in DIGITS_RECIPES.items()}, **_TRANSFORMERS}


def build(name: str, progress: Callable[[str], None] = lambda _: None) -> Program:
    """Build the zoo model ``name``: train or convert (seeded), quantize, measure fidelity.

    The same name gives the same model id on the same software stack.

    Raises:
      UnknownModelError: ``name`` is not in the zoo.
      ModelSourceError: the pretrained files a recipe converts are not installed.
    """
    if name == "minilm-l6":
        from aivm_jax.models._minilm import build_minilm

        return build_minilm(progress)
    if name == "char-gpt":
        from aivm_jax.models._char_gpt import build_char_gpt

        return build_char_gpt(progress)
    recipe = DIGITS_RECIPES.get(name)
    if recipe is None:
        raise UnknownModelError(f"no zoo model {name!r}; available: {', '.join(sorted(zoo_models()))}")
    return build_digits(recipe, progress)
