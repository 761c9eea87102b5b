"""OGM-GE in the Keras adapter: the in-graph formula against the NumPy core, head decompositions, fit()."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras_helpers import keras, single_threaded, tf

from pdmp import OGMGE, modality_scores
from pdmp.backends.keras import (
    ConcatHead,
    ModulatedModel,
    SumHeads,
    _ogm,
    concat_head_logits,
    sum_head_logits,
)

single_threaded()
pytestmark = pytest.mark.keras

NAMES = ["audio", "visual"]
ENCODERS = {"audio": "audio_enc", "visual": "visual_enc"}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- the formula ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    modalities=st.integers(2, 4),
    batch=st.integers(1, 12),
    classes=st.integers(2, 6),
    alpha=st.floats(0.05, 3.0),
    spread=st.floats(0.1, 8.0),
)
def test_in_graph_scores_and_coefficients_match_the_core(
    seed: int, modalities: int, batch: int, classes: int, alpha: float, spread: float
) -> None:
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(modalities)]
    logits = {name: rng.normal(scale=spread, size=(batch, classes)) for name in names}
    labels = rng.integers(0, classes, batch)
    policy = OGMGE(names, alpha=alpha)
    expected_scores = modality_scores(logits, labels)
    scores = _ogm.batch_scores([tf.constant(logits[n], tf.float32) for n in names], tf.constant(labels))
    np.testing.assert_allclose(scores.numpy(), [expected_scores[n] for n in names], rtol=1e-5, atol=1e-6)
    ratios = policy.ratios(expected_scores)
    if any(abs(r - 1.0) < 1e-4 for r in ratios.values()):
        return  # float32 vs float64 may fall on either side of the rho > 1 threshold
    expected = policy.coefficients(logits=logits, labels=labels)
    got = _ogm.coefficients(tf.constant([expected_scores[n] for n in names], tf.float32), alpha).numpy()
    np.testing.assert_allclose(got, [expected[n] for n in names], rtol=1e-4, atol=1e-6)


def test_formula_edge_cases_follow_the_core() -> None:
    policy = OGMGE(NAMES, alpha=0.8)
    tie = _ogm.coefficients(tf.constant([2.0, 2.0]), 0.8).numpy()
    assert (
        list(tie)
        == [1.0, 1.0]
        == list(policy.modulation(step=0, epoch=0, scores={"audio": 2, "visual": 2}).coefficients.values())
    )
    huge = _ogm.coefficients(tf.constant([1e6, 1e-3]), 50.0).numpy()
    assert 0 < huge[0] <= np.finfo(np.float32).tiny and huge[1] == 1.0  # floored, still positive
    zero = _ogm.coefficients(tf.constant([0.0, 3.0]), 0.8).numpy()
    assert np.isfinite(zero).all() and zero[0] == 1.0 and 0 < zero[1] < 1
    one_hot = _ogm.batch_scores([tf.constant([[0.0, 5.0], [5.0, 0.0]])], tf.constant([[0.0, 1.0], [1.0, 0.0]]))
    by_index = _ogm.batch_scores([tf.constant([[0.0, 5.0], [5.0, 0.0]])], tf.constant([1, 0]))
    np.testing.assert_allclose(one_hot.numpy(), by_index.numpy())


# -- head decompositions --------------------------------------------------------------------------------


def test_concat_head_logits_split_the_head_and_sum_to_its_output() -> None:
    rng = np.random.default_rng(0)
    head = keras.layers.Dense(3)
    fa, fv = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 5)).astype("float32")
    head.build((None, 7))
    head.bias.assign(rng.normal(size=3).astype("float32"))
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    parts = concat_head_logits(head, {"audio": fa, "visual": fv})
    np.testing.assert_allclose(parts["audio"].numpy(), fa @ kernel[:2] + bias / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts["visual"].numpy(), fv @ kernel[2:] + bias / 2, rtol=1e-5, atol=1e-6)
    fused = head(np.concatenate([fa, fv], axis=1)).numpy()
    np.testing.assert_allclose(parts["audio"].numpy() + parts["visual"].numpy(), fused, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"feature widths \{'audio': 2, 'visual': 2\} add up to 4, but head"):
        concat_head_logits(head, {"audio": fa, "visual": fv[:, :2]})
    with pytest.raises(TypeError, match="Dense-like head"):
        concat_head_logits(keras.layers.ReLU(), {"audio": fa, "visual": fv})


def test_sum_head_logits_are_each_heads_output() -> None:
    heads = {"audio": keras.layers.Dense(3), "visual": keras.layers.Dense(3)}
    features = {"audio": np.ones((2, 4), "float32"), "visual": np.ones((2, 6), "float32")}
    parts = sum_head_logits(heads, features)
    for name in NAMES:
        np.testing.assert_allclose(parts[name].numpy(), heads[name](features[name]).numpy())
    with pytest.raises(ValueError, match="give one feature tensor per head"):
        sum_head_logits(heads, {"audio": features["audio"]})


# -- fit() ---------------------------------------------------------------------------------------------


def build(fusion: str = "concat", seed: int = 0, width: int = 6) -> keras.Model:
    keras.utils.set_random_seed(seed)
    a, v = keras.Input((3,), name="a"), keras.Input((4,), name="v")
    fa = keras.layers.Dense(width, activation="tanh", name="audio_enc")(a)
    fv = keras.layers.Dense(width, activation="tanh", name="visual_enc")(v)
    if fusion == "concat":
        out = keras.layers.Dense(3, name="head")(keras.layers.Concatenate()([fa, fv]))
    else:
        out = keras.layers.Add()(
            [keras.layers.Dense(3, name="audio_head")(fa), keras.layers.Dense(3, name="visual_head")(fv)]
        )
    return keras.Model({"a": a, "v": v}, out, name="fused")


def data(n: int = 16, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {"a": 2 * rng.normal(size=(n, 3)).astype("float32"), "v": rng.normal(size=(n, 4)).astype("float32")}
    return x, rng.integers(0, 3, n)


def reference_logits(model: keras.Model, x: dict[str, np.ndarray], fusion: str) -> dict[str, np.ndarray]:
    """Per-modality logits computed in NumPy from the layer weights."""
    fa = np.tanh(x["a"] @ model.get_layer("audio_enc").kernel.numpy() + model.get_layer("audio_enc").bias.numpy())
    fv = np.tanh(x["v"] @ model.get_layer("visual_enc").kernel.numpy() + model.get_layer("visual_enc").bias.numpy())
    if fusion == "concat":
        kernel, bias = model.get_layer("head").kernel.numpy(), model.get_layer("head").bias.numpy()
        return {"audio": fa @ kernel[:6] + bias / 2, "visual": fv @ kernel[6:] + bias / 2}
    heads = {name: model.get_layer(f"{name}_head") for name in NAMES}
    return {
        "audio": fa @ heads["audio"].kernel.numpy() + heads["audio"].bias.numpy(),
        "visual": fv @ heads["visual"].kernel.numpy() + heads["visual"].bias.numpy(),
    }


@keras.saving.register_keras_serializable(package="pdmp_tests")
def concat_logits_fn(model: keras.Model, x: object, training: bool) -> dict[str, object]:
    """A user function: rebuild the features with a sub-model and split the head."""
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in ENCODERS.values()])(x, training=training)
    return concat_head_logits(model.get_layer("head"), dict(zip(NAMES, features, strict=True)))


CASES = [
    ("concat", ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"}), False),
    ("concat", ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"}), True),
    ("sum", SumHeads({"audio": "audio_head", "visual": "visual_head"}), False),
    ("concat", concat_logits_fn, False),
]


@pytest.mark.parametrize(("fusion", "spec", "jit"), CASES, ids=["concat", "concat-xla", "sum", "user-fn"])
def test_ogm_step_uses_the_core_coefficient_of_this_batch(fusion: str, spec: object, jit: bool) -> None:
    x, y = data()
    policy = OGMGE(NAMES, alpha=0.6, noise=False)
    model = ModulatedModel(build(fusion), ENCODERS, policy, modality_logits=spec)
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=jit)
    inner = model.inner_model
    expected_scores = modality_scores(reference_logits(inner, x, fusion), y)
    expected_k = policy.coefficients(logits=reference_logits(inner, x, fusion), labels=y)
    assert min(expected_k.values()) < 0.9  # the batch is unbalanced enough to modulate
    with tf.GradientTape() as tape:
        loss = LOSS(y, inner(x, training=True))
    grads = dict(
        zip([v.path for v in inner.trainable_weights], tape.gradient(loss, inner.trainable_weights), strict=True)
    )
    before = {v.path: v.numpy() for v in inner.trainable_weights}
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    for name, k in model.coefficients.items():
        assert k == pytest.approx(expected_k[name], rel=1e-4)
    assert model.state_dict()["scores"] == pytest.approx(expected_scores, rel=1e-5)
    for v in inner.trainable_weights:
        owner = next((n for n, layer in ENCODERS.items() if v.path.startswith(layer + "/")), None)
        k = expected_k[owner] if owner else 1.0
        np.testing.assert_allclose(v.numpy(), before[v.path] - 0.1 * k * grads[v.path].numpy(), rtol=1e-4, atol=1e-6)


def test_ogm_is_inactive_outside_its_epochs_and_then_plain_training() -> None:
    x, y = data()
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    model = ModulatedModel(build(), ENCODERS, OGMGE(NAMES, alpha=0.6, start_epoch=1), modality_logits=spec)
    plain = build()
    for m in (model, plain):
        m.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=False)
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.coefficients == {"audio": 1.0, "visual": 1.0}
    for got, want in zip(model.inner_model.trainable_weights, plain.trainable_weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0)
    assert min(model.coefficients.values()) < 1.0


def test_ogm_noise_reaches_both_encoders_with_the_gradients_scale_and_spares_the_head() -> None:
    """One SGD(1.0) step with and without noise: the difference is -noise, N(0, std(g) + 1e-8) per element.

    Wide encoders (768 and 1024 kernel entries) make the sample standard deviation of the noise a
    sharp estimate: with n entries, (n - 1) * (s / sigma)^2 follows chi^2(n - 1), and the bounds below
    are its 1e-6 two-sided quantiles (about +-13%), so a wrong scale (the loss-scaled gradient, the
    head's, a missing noise) fails while correct noise fails once in a million runs.
    """
    chi2 = pytest.importorskip("scipy.stats").chi2
    x, y = data(64)
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    runs = {}
    for noise in (False, True):
        model = ModulatedModel(
            build(width=256), ENCODERS, OGMGE(NAMES, alpha=0.6, noise=noise), modality_logits=spec, seed=7
        )
        model.compile(keras.optimizers.SGD(1.0), LOSS, jit_compile=False)
        if noise:
            inner = model.inner_model
            with tf.GradientTape() as tape:
                loss = LOSS(y, inner(x, training=True))
            grads = {
                v.path: g.numpy()
                for v, g in zip(inner.trainable_weights, tape.gradient(loss, inner.trainable_weights), strict=True)
            }
        model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
        runs[noise] = {v.path: v.numpy() for v in model.inner_model.trainable_weights}
    checked = 0
    for path in runs[False]:
        difference = runs[True][path] - runs[False][path]  # = -lr * noise
        if path.startswith("head/"):
            np.testing.assert_array_equal(difference, 0.0)
        elif path.endswith("kernel"):
            n = difference.size
            sigma = grads[path].std(ddof=1) + 1e-8
            low, high = (np.sqrt(chi2.ppf(q, n - 1) / (n - 1)) for q in (5e-7, 1 - 5e-7))
            ratio = difference.std(ddof=1) / sigma
            assert low < ratio < high, (path, n, low, ratio, high)
            assert abs(difference.mean()) < 6 * sigma / np.sqrt(n), (path, difference.mean())
            checked += 1
    assert checked == 2


def test_ogm_noise_stream_after_reloading_a_keras_file_equals_the_uninterrupted_run(tmp_path: object) -> None:
    x, y = data()
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})

    def make(seed: int) -> ModulatedModel:
        model = ModulatedModel(build(), ENCODERS, OGMGE(NAMES, alpha=0.6), modality_logits=spec, seed=seed)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS, jit_compile=False)
        return model

    straight, other_seed = make(3), make(4)
    for model in (straight, other_seed):
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    first = make(3)
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(str(tmp_path), "ogm.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    loaded.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, shuffle=False, verbose=0)
    assert loaded.state_dict() == straight.state_dict()
    for got, want, other in zip(
        loaded.inner_model.trainable_weights,
        straight.inner_model.trainable_weights,
        other_seed.inner_model.trainable_weights,
        strict=True,
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
        if got.path.startswith(("audio_enc/", "visual_enc/")):
            assert not np.array_equal(want.numpy(), other.numpy()), got.path  # the noise does matter


def test_bad_labels_fail_before_training_with_ogm() -> None:
    x, y = data()
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    model = ModulatedModel(build(), ENCODERS, OGMGE(NAMES), modality_logits=spec)
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=False)
    before = [v.numpy() for v in model.weights]
    too_big = y.copy()
    too_big[5] = 3
    with pytest.raises(ValueError, match=r"fit\(\) y \(OGM-GE class indices\) contains class index 3 but there are 3"):
        model.fit(x, too_big, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"fit\(\) y \(OGM-GE class indices\) must hold integer class indices"):
        model.fit(x, np.where(np.arange(16) == 2, np.nan, y), batch_size=8, epochs=1, verbose=0)
    for got, want in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(got.numpy(), want, err_msg=got.path)  # nothing trained, clock untouched
    dataset = tf.data.Dataset.from_tensor_slices((x, too_big)).batch(8)  # not checkable up front: in the graph
    with pytest.raises(tf.errors.InvalidArgumentError, match="OGM-GE labels must be class indices"):
        model.fit(dataset, epochs=1, verbose=0)


def test_concat_head_must_list_the_features_in_concatenation_order() -> None:
    wrong = ConcatHead("head", {"visual": "visual_enc", "audio": "audio_enc"})  # equal widths: undetectable later
    with pytest.raises(
        ValueError,
        match=r"concatenates \['audio_enc', 'visual_enc'\] in this order.*"
        r"ConcatHead\('head', \{'audio': 'audio_enc', 'visual': 'visual_enc'\}\)",
    ):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES), modality_logits=wrong)
    with pytest.raises(ValueError, match=r"head 'audio_head' is not applied to a Concatenate"):
        ModulatedModel(build("sum"), ENCODERS, OGMGE(NAMES), modality_logits=ConcatHead("audio_head", dict(ENCODERS)))
    # Weightless layers in between (dropout on the features and on the fusion) keep the order readable.
    a, v = keras.Input((3,), name="a"), keras.Input((4,), name="v")
    fa = keras.layers.Dense(6, name="audio_enc")(a)
    fv = keras.layers.Dense(6, name="visual_enc")(v)
    fused = keras.layers.Dropout(0.1)(keras.layers.Concatenate()([keras.layers.Dropout(0.1)(fa), fv]))
    inner = keras.Model({"a": a, "v": v}, keras.layers.Dense(3, name="head")(fused))
    ModulatedModel(inner, ENCODERS, OGMGE(NAMES), modality_logits=ConcatHead("head", dict(ENCODERS)))


def test_conv_kernels_only_needs_conv_kernels() -> None:
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    with pytest.raises(ValueError, match=r"modulates none of modality\(ies\) \['audio', 'visual'\]'s variables"):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES, conv_kernels_only=True), modality_logits=spec)


def test_bad_logits_specs_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"has no top-level layer\(s\) \['fusion'\]"):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES), modality_logits=ConcatHead("fusion", dict(ENCODERS)))
    with pytest.raises(ValueError, match=r"unknown modality\(ies\) \['sound'\]"):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES), modality_logits=SumHeads({"sound": "a", "visual": "b"}))
    with pytest.raises(ValueError, match="adds noise to gradients, which mode='lr' does not modulate"):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES), mode="lr", modality_logits=ConcatHead("head", dict(ENCODERS)))
    with pytest.raises(TypeError, match="must be ConcatHead, SumHeads or a function"):
        ModulatedModel(build(), ENCODERS, OGMGE(NAMES), modality_logits="head")


def test_ogm_model_with_a_user_function_saves_and_loads(tmp_path: object) -> None:
    x, y = data()
    model = ModulatedModel(build(), ENCODERS, OGMGE(NAMES, alpha=0.6), modality_logits=concat_logits_fn)
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "ogm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.policy == model.policy and loaded.state_dict() == model.state_dict()
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert loaded.step_count == 4
