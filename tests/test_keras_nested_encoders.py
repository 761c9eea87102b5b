"""OGM-GE logits from ConcatHead when the encoders are nested functional models (a common layout)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

import pdmp
from pdmp.backends.keras import ConcatHead, ModulatedModel

import keras  # isort: skip


def _encoder(width_in: int, name: str) -> keras.Model:
    inputs = keras.Input((width_in,))
    return keras.Model(inputs, keras.layers.Dense(6, activation="tanh")(inputs), name=name)


def test_concat_head_taps_nested_encoder_models() -> None:
    keras.utils.set_random_seed(0)
    inputs = {"audio": keras.Input((5,), name="audio"), "image": keras.Input((3,), name="image")}
    encoders = {"audio": _encoder(5, "enc_audio"), "image": _encoder(3, "enc_image")}
    joined = keras.layers.Concatenate()([encoders[n](inputs[n]) for n in ("audio", "image")])
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(joined))
    policy = pdmp.OGMGE(["audio", "image"], alpha=0.5, noise=False)
    fused = ModulatedModel(
        model,
        {"audio": "enc_audio", "image": "enc_image"},
        policy,
        modality_logits=ConcatHead("head", {"audio": "enc_audio", "image": "enc_image"}),
    )
    fused.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    x = {"audio": rng.normal(size=(16, 5)).astype("float32"), "image": rng.normal(size=(16, 3)).astype("float32")}
    y = rng.integers(0, 4, size=16)
    # The expected per-modality logits, computed by hand from the weights before the step.
    kernel, bias = model.get_layer("head").get_weights()
    features = {n: np.asarray(encoders[n](x[n])) for n in ("audio", "image")}
    logits = {"audio": features["audio"] @ kernel[:6] + bias / 2, "image": features["image"] @ kernel[6:] + bias / 2}
    expected = policy.coefficients(epoch=0, logits=logits, labels=y)
    fused.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert fused.coefficients == pytest.approx(expected, rel=1e-5)
    assert min(expected.values()) < 1.0  # the check is not vacuous: one modality was slowed
