"""pdmp.backends.keras.evaluate_robustness and apply_modality_dropout (Keras on TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from keras_helpers import keras, tf

import pdmp
from pdmp.backends.keras import (
    ConcatHead,
    ModalityDropoutData,
    ModulatedModel,
    apply_modality_dropout,
    evaluate_robustness,
)
from pdmp.robustness import FULL, ModalityDropout, drop_modalities, training_means

NAMES = ("audio", "image")


def data(n: int = 40) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    audio = (rng.normal(size=(n, 4)) + 2.0 * np.eye(3, 4)[y]).astype("float32")
    return {"audio": audio, "image": rng.normal(size=(n, 3, 3, 2)).astype("float32")}, y


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    a, v = keras.Input((4,), name="audio"), keras.Input((3, 3, 2), name="image")
    fa = keras.layers.Dense(5, activation="tanh", name="enc_audio")(a)
    fv = keras.layers.Dense(5, activation="tanh", name="enc_image")(keras.layers.Flatten()(v))
    joined = keras.layers.Dropout(0.5)(keras.layers.Concatenate()([fa, fv]))  # off in inference mode
    return keras.Model({"audio": a, "image": v}, keras.layers.Dense(3, name="head")(joined))


def test_evaluation_equals_the_core_with_the_same_forward() -> None:
    model = build()
    x, y = data()
    means = training_means(x)
    conditions = pdmp.robustness_conditions(NAMES, replacements=("zeros", "mean"), snrs_db=(0.0, 20.0))
    table = evaluate_robustness(model, x, y, conditions=conditions, train_means=means, seed=2, batch_size=7)
    expected = pdmp.robustness.evaluate_robustness(
        lambda inputs: np.asarray(model(inputs, training=False)), x, y, conditions=conditions, train_means=means, seed=2
    )
    assert table.to_dict() == expected.to_dict()
    function = evaluate_robustness(lambda inputs: model(inputs, training=False), x, y, conditions=[FULL])
    assert function.row("full").accuracy == table.row("full").accuracy


def test_dropout_replaces_only_the_dropped_samples_and_trains_a_token() -> None:
    x, _ = data(8)
    mask = {"audio": np.array([1, 0, 0, 1, 0, 0, 0, 0], bool), "image": np.zeros(8, bool)}
    out = apply_modality_dropout(x, mask)
    audio = np.asarray(out["audio"])
    assert not audio[[0, 3]].any() and np.array_equal(audio[[1, 2, 4]], x["audio"][[1, 2, 4]])
    assert out["image"] is x["image"]
    filled = apply_modality_dropout(x, mask, replacement="mean", train_means={"audio": np.arange(4.0)})
    assert np.array_equal(np.asarray(filled["audio"])[0], np.arange(4.0, dtype="float32"))
    token = keras.Variable(np.zeros(4, "float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(apply_modality_dropout(x, mask, replacement="token", tokens={"audio": token})["audio"])
    np.testing.assert_array_equal(tape.gradient(total, token.value), np.full(4, 2.0))
    with pytest.raises(ValueError, match="has shape"):
        apply_modality_dropout(x, {"audio": np.zeros(3, bool)})
    with pytest.raises(ValueError, match="not among the inputs"):
        apply_modality_dropout(x, {"text": np.zeros(8, bool)})


def test_dropout_data_feeds_fit_for_pdmp_and_arl() -> None:
    x, y = data(40)
    loader = ModalityDropoutData(x, y, ModalityDropout(NAMES, 0.5, seed=3), batch_size=16, shuffle_seed=0)
    twin = ModalityDropout(NAMES, 0.5, seed=3)
    order = np.random.default_rng(0).permutation(40)[:16]
    first, labels = loader[0]
    expected = drop_modalities({k: v[order] for k, v in x.items()}, twin.mask(16))
    assert all(np.array_equal(first[k], expected[k]) for k in NAMES) and np.array_equal(labels, y[order])
    assert any((~first[k].reshape(16, -1).any(axis=1)).any() for k in NAMES)  # some rows were dropped
    encoders = {"audio": "enc_audio", "image": "enc_image"}
    for policy in (pdmp.PDMP(list(NAMES), "audio", 10.0, 0.5), pdmp.ARL(list(NAMES), warmup=0)):
        model = build()
        before = [np.array(v.numpy()) for v in model.trainable_weights]
        head = ConcatHead("head", {"audio": "enc_audio", "image": "enc_image"}) if policy.needs_logits else None
        wrapped = ModulatedModel(model, encoders, policy, modality_logits=head, unimodal_logits=head)
        wrapped.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        data_for_fit = ModalityDropoutData(x, y, ModalityDropout(NAMES, 0.5, seed=3), batch_size=16)
        wrapped.fit(data_for_fit, epochs=2, verbose=0)
        after = [np.array(v.numpy()) for v in model.trainable_weights]
        assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True)), policy.kind
    with pytest.raises(ValueError, match="samples but y"):
        ModalityDropoutData(x, y[:-1], twin)
