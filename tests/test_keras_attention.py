"""Attention fusion in Keras (benchmarks.models_attention_keras): PDMP through ModulatedModel unchanged,
ARL through unimodal heads, OGM-GE refused."""

from __future__ import annotations

import numpy as np
import pytest
from keras_helpers import keras, single_threaded

import pdmp
from benchmarks.models_attention import AttentionWiringError
from benchmarks.models_attention_keras import attention_fusion_model, modulated_attention_model

single_threaded()
NAMES = ["audio", "image"]
SHAPES = {"audio": (6,), "image": (8, 8, 1)}


def data(n: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    audio = rng.normal(size=(n, 6)) + np.eye(3, 6)[y]
    return {"audio": audio.astype("float32"), "image": rng.normal(size=(n, 8, 8, 1)).astype("float32")}, y


def build() -> tuple[keras.Model, dict[str, str]]:
    keras.utils.set_random_seed(0)
    return attention_fusion_model(SHAPES, {"audio": "cnn", "image": "cnn"}, 8, 3, depth=1, heads=2)


def variables(layer: keras.layers.Layer) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in layer.trainable_weights]


def fit(model: keras.Model) -> None:
    x, y = data()
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)


def test_forward_and_pdmp_through_modulated_model() -> None:
    fused, encoders = build()
    x, _ = data()
    assert fused(x).shape == (32, 3)
    changed = dict(x, image=np.zeros_like(x["image"]))
    assert not np.allclose(fused(changed), fused(x))  # cross-modal attention reads both
    model = modulated_attention_model(fused, encoders, pdmp.PDMP(NAMES, "audio", 10.0, 0.5), 3)
    before = {name: variables(fused.get_layer(layer)) for name, layer in encoders.items()}
    fit(model)
    assert model.coefficients == {"audio": 10.0, "image": 0.5}
    for name, layer in encoders.items():
        after = variables(fused.get_layer(layer))
        assert any(not np.array_equal(a, b) for a, b in zip(after, before[name], strict=True))


def test_arl_trains_its_unimodal_heads_and_ogmge_is_refused() -> None:
    fused, encoders = build()
    with pytest.raises(AttentionWiringError, match="OGMGE"):
        modulated_attention_model(fused, encoders, pdmp.OGMGE(NAMES), 3)
    model = modulated_attention_model(fused, encoders, pdmp.ARL(NAMES, warmup=0), 3)
    heads = model.inner_model.unimodal_heads
    before = {name: variables(head) for name, head in heads.items()}
    fit(model)
    for name, head in heads.items():
        assert any(not np.array_equal(a, b) for a, b in zip(variables(head), before[name], strict=True))
