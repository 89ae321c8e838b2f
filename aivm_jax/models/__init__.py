"""Model zoo: float models (Flax), their data, and the recipes that turn them into programs."""

from aivm_jax.models._digits import DigitsData, load_digits_data
from aivm_jax.models._flax_net import SequentialNet
from aivm_jax.models._zoo import build, zoo_models

__all__ = ["DigitsData", "SequentialNet", "build", "load_digits_data", "zoo_models"]
