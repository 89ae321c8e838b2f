"""Digits classifiers: scikit-learn's 8x8 digits, a Flax float model, and its AIVM program.

Data: `sklearn.datasets.load_digits` (ships offline): 1797 images of 8x8
pixels with integer intensities 0..16. The program's input is those integers
as int8 (shape ``(64,)`` for the MLP, ``(8, 8, 1)`` for the CNN); the float
model sees ``pixels / 16``. The split is a fixed permutation (seed 0): 1437
training and 360 held-out test images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aivm_jax.models._flax_net import SequentialNet
from aivm_jax.program import Program
from aivm_jax.quant import AvgPool, Conv, Dense, Flatten, Layer, MaxPool, classification_fidelity, quantize

__all__ = [
    "DIGITS_RECIPES",
    "DigitsData",
    "DigitsRecipe",
    "build_digits",
    "load_digits_data",
    "train_float_model",
]

PIXEL_SCALE = 1.0 / 16.0
_TEST_SIZE = 360
_CALIBRATION_SIZE = 512


@dataclasses.dataclass(frozen=True)
class DigitsData:
    """int8 images ``(n, 64)`` with values 0..16 and int64 labels, split train/test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_data() -> DigitsData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.data.astype(np.int8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:_TEST_SIZE], order[_TEST_SIZE:]
    return DigitsData(images[train], labels[train], images[test], labels[test])


@dataclasses.dataclass(frozen=True, kw_only=True)
class DigitsRecipe:
    """How one zoo digits model is made: architecture, input shape and training schedule."""

    name: str
    description: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    epochs: int
    learning_rate: float = 3e-3
    batch_size: int = 64
    seed: int = 0


DIGITS_RECIPES = {
    recipe.name: recipe
    for recipe in [
        DigitsRecipe(
            name="digits-mlp",
            description="MLP 64-64-32-10 on sklearn 8x8 digits",
            layers=(Dense(features=64, relu=True), Dense(features=32, relu=True), Dense(features=10)),
            input_shape=(64,),
            epochs=60,
        ),
        DigitsRecipe(
            name="digits-cnn",
            description="CNN conv3x3x16-maxpool-conv3x3x32-avgpool-dense10 on sklearn 8x8 digits",
            layers=(
                Conv(features=16),
                MaxPool(),
                Conv(features=32),
                AvgPool(),
                Flatten(),
                Dense(features=10),
            ),
            input_shape=(8, 8, 1),
            epochs=40,
        ),
    ]
}


def _train(recipe: DigitsRecipe, x: np.ndarray, y: np.ndarray, progress: Callable[[str], None]):
    """Adam on softmax cross-entropy, seeded; returns Flax params as NumPy arrays."""
    model = SequentialNet(layers=recipe.layers)
    params = model.init(jax.random.PRNGKey(recipe.seed), jnp.zeros((1, *recipe.input_shape)))["params"]
    optimizer = optax.adam(recipe.learning_rate)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss_fn(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(recipe.seed)
    usable = len(y) - len(y) % recipe.batch_size
    for epoch in range(recipe.epochs):
        order = rng.permutation(len(y))[:usable].reshape(-1, recipe.batch_size)
        for batch in order:
            params, state, loss = step(params, state, x[batch], y[batch])
        if (epoch + 1) % 10 == 0 or epoch + 1 == recipe.epochs:
            progress(f"{recipe.name}: epoch {epoch + 1}/{recipe.epochs}, loss {float(loss):.4f}")
    return jax.tree_util.tree_map(np.asarray, params)


def train_float_model(recipe: DigitsRecipe, progress: Callable[[str], None] = lambda _: None):
    """Train the recipe's float Flax model on the training split; return its params (NumPy)."""
    data = load_digits_data()
    x_train = (data.x_train.astype(np.float32) * PIXEL_SCALE).reshape((-1, *recipe.input_shape))
    # Flax and optax rely on standard promotion; do not depend on the caller's global setting.
    with jax.numpy_dtype_promotion("standard"):
        return _train(recipe, x_train, data.y_train, progress)


def build_digits(recipe: DigitsRecipe, progress: Callable[[str], None] = lambda _: None) -> Program:
    """Train the float model, quantize it, measure fidelity on the test split, return the program."""
    from aivm_jax.runtime import infer

    data = load_digits_data()
    shape = (-1, *recipe.input_shape)
    x_train = (data.x_train.astype(np.float32) * PIXEL_SCALE).reshape(shape)
    x_test_int = data.x_test.reshape(shape)
    params = train_float_model(recipe, progress)
    with jax.numpy_dtype_promotion("standard"):
        float_logits = np.asarray(
            SequentialNet(layers=recipe.layers).apply(
                {"params": params}, (x_test_int * PIXEL_SCALE).astype(np.float32)
            )
        )
    progress(f"{recipe.name}: calibrating on {_CALIBRATION_SIZE} training images")
    program = quantize(
        recipe.layers,
        params,
        name=recipe.name,
        input_shape=recipe.input_shape,
        input_scale=PIXEL_SCALE,
        calibration=x_train[:_CALIBRATION_SIZE],
        metadata={"description": recipe.description},
    )
    integer = infer(program, x_test_int).outputs
    report = classification_fidelity(
        float_logits=float_logits,
        integer_outputs=integer,
        labels=data.y_test,
        dataset=f"sklearn digits, {_TEST_SIZE} held-out images (permutation seed 0)",
    )
    progress(
        f"{recipe.name}: float accuracy {report['float_correct']}/{report['examples']}, "
        f"integer accuracy {report['integer_correct']}/{report['examples']}"
    )
    return program.with_metadata(fidelity=report)
