"""The model zoo: named recipes that build AIVM programs reproducibly."""

from __future__ import annotations

from collections.abc import Callable

from aivm_jax._errors import UnknownModelError
from aivm_jax.models._digits import DIGITS_RECIPES, build_digits
from aivm_jax.program import Program

__all__ = ["build", "zoo_models"]


def zoo_models() -> dict[str, str]:
    """Zoo model name -> one-line description."""
    return {name: recipe.description for name, recipe in DIGITS_RECIPES.items()}


def build(name: str, progress: Callable[[str], None] = lambda _: None) -> Program:
    """Build the zoo model ``name``: train (seeded), quantize, measure fidelity.

    The same name gives the same model id on the same software stack.

    Raises:
      UnknownModelError: ``name`` is not in the zoo.
    """
    recipe = DIGITS_RECIPES.get(name)
    if recipe is None:
        raise UnknownModelError(f"no zoo model {name!r}; available: {', '.join(sorted(zoo_models()))}")
    return build_digits(recipe, progress)
