"""Attention fusion in Keras 3 (the design and how each policy applies: :mod:`benchmarks.models_attention`).

:func:`attention_fusion_model` builds the functional model (the encoders of
:mod:`benchmarks.models_keras`, named ``enc_<modality>``); :func:`modulated_attention_model` wraps it in
:class:`pdmp.backends.keras.ModulatedModel` for any policy :func:`attention_wiring` accepts, adding
unimodal heads (:class:`WithUnimodalHeads`) or mono-modal responses where the policy reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import layers, ops

import pdmp
from benchmarks.models_attention import attention_wiring
from benchmarks.models_keras import make_encoder
from pdmp.backends.keras import ModulatedModel


@keras.saving.register_keras_serializable(package="pdmp_benchmarks")
class ModalityTokens(layers.Layer):
    """``[class token, projected_m + modality token_m for each m]`` as one ``(batch, 1 + M, width)`` sequence."""

    def build(self, input_shape: Sequence[Sequence[int]]) -> None:
        count, width = len(input_shape), int(input_shape[0][-1])
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.modality_tokens = self.add_weight(shape=(count, width), initializer=initializer, name="modality_tokens")
        self.class_token = self.add_weight(shape=(1, 1, width), initializer=initializer, name="class_token")

    def call(self, projected: Sequence[Any]) -> Any:
        tokens = ops.stack(list(projected), axis=1) + self.modality_tokens
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(self.class_token, (batch, 1, ops.shape(tokens)[2]))
        return ops.concatenate([cls, tokens], axis=1)


def attention_fusion_model(
    shapes: Mapping[str, Sequence[int]],
    kinds: Mapping[str, str],
    width: int,
    num_classes: int,
    *,
    depth: int = 1,
    heads: int = 4,
) -> tuple[keras.Model, dict[str, str]]:
    """The fused model (inputs keyed by modality, logits out) and each modality's encoder layer name."""
    if width % heads:
        raise ValueError(f"attention fusion: width {width} is not a multiple of heads={heads}")
    inputs = {name: keras.Input(tuple(shape), name=name) for name, shape in shapes.items()}
    encoders = {name: make_encoder(kinds[name], shape, width, f"enc_{name}") for name, shape in shapes.items()}
    features = {name: encoders[name](inputs[name]) for name in shapes}
    projected = [layers.Dense(width, name=f"proj_{name}")(features[name]) for name in shapes]
    x = ModalityTokens(name="tokens")(projected)
    for _ in range(depth):
        attended = layers.LayerNormalization(epsilon=1e-5)(x)
        x = x + layers.MultiHeadAttention(heads, width // heads)(attended, attended)
        hidden = layers.Dense(2 * width, activation="relu")(layers.LayerNormalization(epsilon=1e-5)(x))
        x = x + layers.Dense(width)(hidden)
    pooled = layers.LayerNormalization(epsilon=1e-5, name="fusion_norm")(x[:, 0])
    logits = layers.Dense(num_classes, name="head")(pooled)
    return keras.Model(inputs, logits, name="attention_fused"), {name: e.name for name, e in encoders.items()}


class WithUnimodalHeads(keras.Model):
    """The fused model plus a linear unimodal head per encoder (trained by the policy's unimodal losses)."""

    def __init__(self, fused: keras.Model, encoders: Mapping[str, str], num_classes: int) -> None:
        super().__init__(name="attention_with_unimodal_heads")
        self.fused = fused
        self.encoders = {name: fused.get_layer(layer) for name, layer in encoders.items()}
        self.unimodal_heads = {name: layers.Dense(num_classes, name=f"unimodal_{name}") for name in encoders}

    def call(self, inputs: Any, training: Any = None) -> Any:
        return self.fused(inputs, training=training)

    def features(self, inputs: Any, training: Any = None) -> dict[str, Any]:
        """Each encoder's features (one more pass of the encoders, the ``fn`` form's extra forward)."""
        return {name: encoder(inputs[name], training=training) for name, encoder in self.encoders.items()}


def unimodal_head_logits(model: Any, x: Any, training: bool) -> dict[str, Any]:
    features = model.features(x, training=training)
    return {name: model.unimodal_heads[name](value) for name, value in features.items()}


def mono_modal_responses(model: Any, x: Any, training: bool) -> dict[str, Any]:
    """AGM's responses: the fused model with the other modalities' inputs zeroed, in inference mode."""
    responses = pdmp.mono_modal_responses(lambda inputs: model(inputs, training=False), x)
    return {name: ops.stop_gradient(value) for name, value in responses.items()}


def modulated_attention_model(
    fused: keras.Model, encoders: Mapping[str, str], policy: pdmp.CoefficientPolicy, num_classes: int, **options: Any
) -> ModulatedModel:
    """``ModulatedModel`` of ``fused`` for ``policy``, wired as :func:`attention_wiring` says (refusals raise)."""
    wiring = attention_wiring(policy)
    if wiring == "parameters":
        return ModulatedModel(fused, dict(encoders), policy, **options)
    if wiring == "masked_inputs":
        return ModulatedModel(fused, dict(encoders), policy, modality_logits=mono_modal_responses, **options)
    model = WithUnimodalHeads(fused, encoders, num_classes)
    sample = {inp.name: ops.zeros((1, *inp.shape[1:])) for inp in fused.inputs}
    model(sample)  # builds the wrapper
    unimodal_head_logits(model, sample, False)  # builds the heads
    reads = policy.needs_logits or policy.observes_scores
    return ModulatedModel(
        model,
        {name: fused.get_layer(layer) for name, layer in encoders.items()},
        policy,
        modality_logits=unimodal_head_logits if reads else None,
        unimodal_logits=unimodal_head_logits,
        **options,
    )


__all__ = ["ModalityTokens", "WithUnimodalHeads", "attention_fusion_model", "modulated_attention_model"]
