"""Model zoo: float models (Flax), their data, and the recipes that turn them into programs."""

from aivm_jax.models._digits import (
    DIGITS_RECIPES,
    PIXEL_SCALE,
    DigitsData,
    load_digits_data,
    train_float_model,
)
from aivm_jax.models._flax_net import SequentialNet
from aivm_jax.models._zoo import build, zoo_models

__all__ = [
    "DIGITS_RECIPES",
    "PIXEL_SCALE",
    "DigitsData",
    "SequentialNet",
    "build",
    "load_digits_data",
    "train_float_model",
    "zoo_models",
]
