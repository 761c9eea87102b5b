"""The benchmark encoders of :mod:`benchmarks.models_torch`, built the same way in Keras (channels-last).

Same shapes and widths: a narrow ResNet-style CNN (stem, three residual stages, global average pool)
and a ViT/AST-style transformer (patch embedding, learned positions, pre-norm encoder layers, mean
pool); an MLP for vector inputs. BatchNorm uses torch's defaults (momentum 0.1 there is 0.9 here,
epsilon 1e-5). Fusion: concat with a linear head (the Keras benchmark covers concat only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import layers

from benchmarks.protocol import WIDE_MLP_HIDDEN


def _bn() -> layers.Layer:
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)


def _residual_block(x: keras.KerasTensor, channels: int, stride: int) -> keras.KerasTensor:
    out = layers.Conv2D(channels, 3, stride, padding="same", use_bias=False)(x)
    out = layers.ReLU()(_bn()(out))
    out = _bn()(layers.Conv2D(channels, 3, 1, padding="same", use_bias=False)(out))
    shortcut = x
    if stride != 1 or x.shape[-1] != channels:
        shortcut = _bn()(layers.Conv2D(channels, 1, stride, use_bias=False)(x))
    return layers.ReLU()(layers.Add()([out, shortcut]))


def resnet_encoder(input_shape: Sequence[int], width: int, name: str) -> keras.Model:
    inputs = keras.Input(tuple(input_shape))
    base = max(width // 4, 8)
    x = layers.ReLU()(_bn()(layers.Conv2D(base, 3, 1, padding="same", use_bias=False)(inputs)))
    x = _residual_block(x, base, 1)
    x = _residual_block(x, base * 2, 2)
    x = _residual_block(x, width, 2)
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(x), name=name)


class _Positions(layers.Layer):
    """Learned position embedding added to the patch tokens."""

    def build(self, input_shape: Sequence[int]) -> None:
        self.position = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]), initializer=keras.initializers.TruncatedNormal(stddev=0.02)
        )

    def call(self, tokens: keras.KerasTensor) -> keras.KerasTensor:
        return tokens + self.position


def transformer_encoder(
    input_shape: Sequence[int], width: int, name: str, patch: int = 4, depth: int = 2, heads: int = 4
) -> keras.Model:
    inputs = keras.Input(tuple(input_shape))
    x = layers.Conv2D(width, patch, patch)(inputs)
    x = _Positions()(layers.Reshape((-1, width))(x))
    for _ in range(depth):
        attended = layers.LayerNormalization(epsilon=1e-5)(x)
        x = x + layers.MultiHeadAttention(heads, width // heads)(attended, attended)
        hidden = layers.Dense(2 * width, activation="relu")(layers.LayerNormalization(epsilon=1e-5)(x))
        x = x + layers.Dense(width)(hidden)
    x = layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(inputs, layers.GlobalAveragePooling1D()(x), name=name)


def mlp_encoder(input_shape: Sequence[int], width: int, name: str, hidden: int | None = None) -> keras.Model:
    inputs = keras.Input(tuple(input_shape))
    hidden = hidden or 2 * width
    x = layers.Dense(hidden, activation="relu")(layers.Flatten()(inputs) if len(input_shape) > 1 else inputs)
    out = width if hidden == 2 * width else hidden
    return keras.Model(inputs, layers.Dense(out, activation="relu")(x), name=name)


def make_encoder(kind: str, input_shape: Sequence[int], width: int, name: str) -> keras.Model:
    """``input_shape`` is channels-last for images; vectors get an MLP whatever ``kind`` says;
    ``"wide_mlp"`` is the flattening 512-512 MLP of the under-optimization regime."""
    if len(input_shape) == 1:
        return mlp_encoder(input_shape, width, name)
    if kind == "wide_mlp":
        return mlp_encoder(input_shape, width, name, hidden=WIDE_MLP_HIDDEN)
    if kind == "cnn":
        return resnet_encoder(input_shape, width, name)
    if kind == "transformer":
        return transformer_encoder(input_shape, width, name)
    raise ValueError(f"unknown encoder {kind!r}; use 'cnn' or 'transformer'")


def fusion_model(
    shapes: Mapping[str, Sequence[int]], kinds: Mapping[str, str], width: int, num_classes: int
) -> tuple[keras.Model, dict[str, str]]:
    """Concat fusion: returns the model (inputs keyed by modality) and each modality's encoder name."""
    inputs = {name: keras.Input(tuple(shape), name=name) for name, shape in shapes.items()}
    encoders = {name: make_encoder(kinds[name], shape, width, f"enc_{name}") for name, shape in shapes.items()}
    features = [encoders[name](inputs[name]) for name in shapes]
    joined = layers.Concatenate()(features) if len(features) > 1 else features[0]
    logits = layers.Dense(num_classes, name="head")(joined)
    return keras.Model(inputs, logits, name="fused"), {name: encoder.name for name, encoder in encoders.items()}
