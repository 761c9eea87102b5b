"""Keras dependency_shares: a fused model's per-modality dependency over a dataset, against a hand split."""

from __future__ import annotations

import numpy as np
import pytest
from keras_helpers import keras, tf

import pdmp
from pdmp import PDMP
from pdmp.backends.keras import ConcatHead, ModulatedModel, SumHeads, dependency_shares

pytestmark = pytest.mark.keras

N = 50


def data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, N)
    audio = rng.normal(size=(N, 6)) + 2.0 * np.eye(3, 6)[y]  # informative
    return {"a": audio.astype("float32"), "v": rng.normal(size=(N, 4)).astype("float32")}, y


def build(fusion: str = "concat") -> keras.Model:
    keras.utils.set_random_seed(0)
    a, v = keras.Input((6,), name="a"), keras.Input((4,), name="v")
    fa = keras.layers.Dense(5, activation="relu", name="audio_enc")(a)
    fa = keras.layers.Dropout(0.5, name="audio_drop")(fa)  # off in inference mode
    fv = keras.layers.Dense(3, activation="tanh", name="image_enc")(v)
    if fusion == "concat":
        out = keras.layers.Dense(3, name="head")(keras.layers.Concatenate(name="concat")([fa, fv]))
    else:
        out = keras.layers.Add(name="sum")(
            [keras.layers.Dense(3, name="audio_head")(fa), keras.layers.Dense(3, name="image_head")(fv)]
        )
    return keras.Model({"a": a, "v": v}, out, name="fused")


def by_hand(model: keras.Model, x: dict[str, np.ndarray], y: np.ndarray, fusion: str = "concat") -> pdmp.Dependency:
    f_a = np.asarray(model.get_layer("audio_enc")(x["a"]), dtype=np.float64)
    f_v = np.asarray(model.get_layer("image_enc")(x["v"]), dtype=np.float64)
    if fusion == "concat":
        head = model.get_layer("head")
        w, b = np.asarray(head.kernel, dtype=np.float64), np.asarray(head.bias, dtype=np.float64)
        logits = {"audio": f_a @ w[:5] + b / 2, "image": f_v @ w[5:] + b / 2}
    else:
        logits = {
            name: np.asarray(model.get_layer(f"{name}_head")(f), dtype=np.float64)
            for name, f in (("audio", f_a), ("image", f_v))
        }
    np.testing.assert_allclose(logits["audio"] + logits["image"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    return pdmp.dependency(logits, y)


def assert_same(got: pdmp.Dependency, want: pdmp.Dependency) -> None:
    assert got.mass == pytest.approx(want.mass, rel=1e-5) and got.share == pytest.approx(want.share, rel=1e-5)
    assert sum(got.share.values()) == pytest.approx(1.0)


def test_concat_head_equals_the_hand_split_in_any_batch_size() -> None:
    model, (x, y) = build(), data()
    spec = ConcatHead("head", {"audio": "audio_drop", "image": "image_enc"})
    want = by_hand(model, x, y)
    assert 0.0 < want.share["audio"] < 1.0 and want.share["audio"] != pytest.approx(0.5, abs=1e-3)
    for batch_size in (7, 256):
        assert_same(dependency_shares(model, spec, x, y, batch_size=batch_size), want)


def test_sum_heads_from_a_dataset_and_a_function_spec() -> None:
    model, (x, y) = build("sum"), data()
    want = by_hand(model, x, y, fusion="sum")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert_same(dependency_shares(model, SumHeads({"audio": "audio_head", "image": "image_head"}), dataset), want)

    def split(m: keras.Model, inputs: dict, training: bool) -> dict:
        return {
            "audio": m.get_layer("audio_head")(m.get_layer("audio_enc")(inputs["a"])),
            "image": m.get_layer("image_head")(m.get_layer("image_enc")(inputs["v"])),
        }

    assert_same(dependency_shares(model, split, x, y, batch_size=20), want)


def test_a_modulated_model_brings_its_own_spec() -> None:
    inner, (x, y) = build(), data()
    spec = ConcatHead("head", {"audio": "audio_drop", "image": "image_enc"})
    model = ModulatedModel(inner, {"audio": "audio_enc", "image": "image_enc"}, PDMP(["audio", "image"], "audio"),
                           modality_logits=spec)  # fmt: skip
    assert_same(dependency_shares(model, None, x, y), by_hand(inner, x, y))


def test_bad_input_names_the_fix() -> None:
    model, (x, y) = build(), data()
    spec = ConcatHead("head", {"audio": "audio_drop", "image": "image_enc"})
    with pytest.raises(ValueError, match="needs per-modality logits"):
        dependency_shares(model, None, x, y)
    with pytest.raises(ValueError, match="pass the labels y"):
        dependency_shares(model, spec, x)
    with pytest.raises(ValueError, match="inputs have \\[50\\] samples but y has 49"):
        dependency_shares(model, spec, x, y[:49])
    with pytest.raises(ValueError, match=r"batch 0: .*class index 7"):
        dependency_shares(model, spec, x, np.where(y == 0, 7, y))
    with pytest.raises(ValueError, match=r"concatenates .* in this order"):
        dependency_shares(model, ConcatHead("head", {"image": "image_enc", "audio": "audio_drop"}), x, y)
    with pytest.raises(TypeError, match="modality_logits must be ConcatHead, SumHeads or a function"):
        dependency_shares(model, "head", x, y)
    with pytest.raises(ValueError, match="batch_size must be"):
        dependency_shares(model, spec, x, y, batch_size=0)
