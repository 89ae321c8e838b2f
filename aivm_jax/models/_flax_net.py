"""The Flax module a layer list describes (the float model that quantization starts from)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from aivm_jax.quant import AvgPool, Conv, Dense, Flatten, Layer, MaxPool

__all__ = ["SequentialNet"]


class SequentialNet(nn.Module):
    """Applies ``layers`` in order; layer ``i``'s parameters are named ``layer_{i}``."""

    layers: Sequence[Layer]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, layer in enumerate(self.layers):
            name = f"layer_{index}"
            if isinstance(layer, Dense):
                x = nn.Dense(layer.features, name=name)(x)
            elif isinstance(layer, Conv):
                x = nn.Conv(
                    layer.features, layer.kernel, strides=layer.strides, padding=layer.padding, name=name
                )(x)
            elif isinstance(layer, MaxPool):
                x = nn.max_pool(x, layer.window, strides=layer.strides)
            elif isinstance(layer, AvgPool):
                x = nn.avg_pool(x, layer.window, strides=layer.strides)
            elif isinstance(layer, Flatten):
                x = x.reshape(x.shape[0], -1)
            if getattr(layer, "relu", False):
                x = nn.relu(x)
        return x
