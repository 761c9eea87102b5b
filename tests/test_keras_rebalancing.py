"""G-Blending, PMR, Diagnosing & Re-learning and MLA (``pdmp.rebalancing``) through ``ModulatedModel.fit`` on
TensorFlow: each step's arithmetic against a hand transcription from the core (float64 models of
:mod:`parity_models`, plain SGD so that an update is ``-lr * gradient``), the epoch-boundary work against the
core fed by hand, and the wiring refusals. Keras on JAX is compared with this path in ``test_parity_jax.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from keras_helpers import keras, single_threaded, tf

single_threaded()

from parity_models import (  # noqa: E402
    keras_parameters,
    keras_rebalancing_model,
    make_data,
    names_of,
)

import pdmp  # noqa: E402
from pdmp.backends.keras import ModulatedModel, _rebalancing  # noqa: E402
from pdmp.rebalancing import (  # noqa: E402
    FUSED,
    LossTerms,
    clustering_purity,
    entropy_fusion_weights,
    gblending_weights,
    prototype_logits,
    relearning_strength,
)

pytestmark = pytest.mark.keras

SPEC = (("audio", "mlp", (6,)), ("image", "mlp", (5,)))
NAMES = names_of(SPEC)
LR = 2.0**-4
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
EXACT = {"rtol": 1e-9, "atol": 1e-12}


def compiled(model: ModulatedModel, momentum: float = 0.0) -> ModulatedModel:
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=momentum), loss=LOSS)
    return model


def params(model: ModulatedModel) -> dict[str, np.ndarray]:
    inner = model.inner_model
    named = keras_parameters(getattr(inner, "fused", inner))
    for name, head in getattr(inner, "unimodal_heads", {}).items():
        named[f"{name}_unimodal/kernel"], named[f"{name}_unimodal/bias"] = head.kernel, head.bias
    return {key: np.array(v.numpy()) for key, v in named.items()}


def ce(logits: Any, y: np.ndarray) -> Any:
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(y), logits))


def sgd(model: ModulatedModel, loss_fn: Any, variables: list[Any] | None = None) -> dict[str, np.ndarray]:
    """The hand step: ``w - LR * d loss_fn() / dw`` for ``variables`` (default: all trainable), applied to a copy."""
    variables = list(model.trainable_variables if variables is None else variables)
    with tf.GradientTape() as tape:
        loss = loss_fn()
    gradients = tape.gradient(loss, variables)
    for variable, gradient in zip(variables, gradients, strict=True):
        if gradient is not None:
            variable.assign(variable - LR * gradient)
    return params(model)


def assert_params(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tolerance: dict[str, float], what: str):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], **tolerance, err_msg=f"{what}: {key}")


# -- the in-graph twin of LossTerms.combine ------------------------------------------------------------------------


def test_in_graph_combine_equals_the_cores_loss_terms_combine() -> None:
    rng = np.random.default_rng(0)
    terms = LossTerms(fused=0.3, unimodal={"audio": 0.7, "image": 0.0}, prototype={"image": 1.5},
                      prototype_entropy={"audio": 0.25})  # fmt: skip
    losses = {kind: [float(v) for v in rng.uniform(0.1, 2.0, size=2)] for kind in _rebalancing.KINDS}
    fused = 1.3
    want = terms.combine(fused, **{kind: dict(zip(NAMES, losses[kind], strict=True)) for kind in _rebalancing.KINDS})
    vector = tf.constant(terms.vector(NAMES))
    got = _rebalancing.combine(
        vector,
        2,
        tf.constant(fused, tf.float64),
        {k: [tf.constant(v, tf.float64) for v in vs] for k, vs in losses.items()},
    )
    assert float(got) == pytest.approx(want, rel=1e-15)
    assert want != pytest.approx(fused * 0.3 + sum(losses["unimodal"]))  # the weights matter


# -- G-Blending ----------------------------------------------------------------------------------------------------


def term_losses(model: ModulatedModel, x: Any, y: np.ndarray) -> dict[str, float]:
    inner = model.inner_model
    features = inner.features(x, training=False)
    result = {m: float(ce(inner.unimodal_heads[m](features[m]), y)) for m in NAMES}
    result[FUSED] = float(ce(inner(x, training=False), y))
    return result


def test_gblending_steps_weigh_each_term_by_the_weights_of_its_held_out_checkpoints() -> None:
    """Checkpoints before training and after every epoch (super_epoch=1) hold every term's mean loss on the training
    and held-out data; the weights of epoch 2 are gblending_weights of the two checkpoints before it, and its
    first step's update is the hand gradient of ``w_fused * CE(fused) + sum_m w_m * CE(head_m)``."""
    x, y = make_data(SPEC, 32)
    held = make_data(SPEC, 24, seed=4)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.GBlending(NAMES, super_epoch=1)))
    hand = compiled(keras_rebalancing_model(SPEC, pdmp.GBlending(NAMES, super_epoch=1)))
    checkpoints = [(term_losses(hand, x, y), term_losses(hand, *held))]
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, held_out=held)
    hand.set_weights(model.get_weights())
    checkpoints.append((term_losses(hand, x, y), term_losses(hand, *held)))
    expected = gblending_weights(*checkpoints[0], *checkpoints[1])
    terms = model.policy.loss_terms()
    weights = {FUSED: terms.fused, **terms.unimodal}
    assert weights == pytest.approx(expected, rel=1e-9), (weights, expected)
    assert len(set(expected.values())) == 3, f"the weights must differ from equal ones: {expected}"
    for key, value in checkpoints[1][1].items():
        assert model.policy._last["held_out"][key] == pytest.approx(value, rel=1e-12), key

    inner = hand.inner_model

    def loss() -> Any:
        features = inner.features(x, training=True)
        unimodal = sum(weights[m] * ce(inner.unimodal_heads[m](features[m]), y) for m in NAMES)
        return weights[FUSED] * ce(inner(x, training=True), y) + unimodal

    want = sgd(hand, loss)
    model.fit(x, y, batch_size=32, epochs=2, initial_epoch=1, shuffle=False, verbose=0, held_out=held)
    assert_params(params(model), want, EXACT, "G-Blending step")


# -- PMR -----------------------------------------------------------------------------------------------------------


def test_pmr_prototypes_are_the_cores_class_means_and_a_step_adds_the_prototype_loss_it_names() -> None:
    """Before training the prototypes are the class means of the first prototype_batches(n) batches' features
    (inference mode); a step's loss is CE(fused) + sum_m alpha * b_m * CE(-||z_m - c_m||), b_m from the core."""
    x, y = make_data(SPEC, 32)
    policy = pdmp.PMR(NAMES, alpha=2.0, prototype_fraction=2)  # 2 batches of 16: the first one
    model = compiled(keras_rebalancing_model(SPEC, policy))
    hand = compiled(keras_rebalancing_model(SPEC, pdmp.PMR(NAMES)))
    inner = hand.inner_model
    extract = keras.Model(inner.inputs, {m: inner.get_layer(f"{m}_fc2").output for m in NAMES})
    first = {m: v[:16] for m, v in x.items()}
    features = {m: np.asarray(v) for m, v in extract(first, training=False).items()}
    reference = pdmp.PMR(NAMES)
    reference.accumulate(features, y[:16], num_classes=3)
    prototypes = reference.close_prototypes(0)

    rows = {m: v[:16] for m, v in x.items()}
    z = {m: np.asarray(v) for m, v in extract(rows, training=True).items()}
    terms = policy.loss_terms(epoch=0, prototype_logits={m: prototype_logits(z[m], prototypes[m]) for m in NAMES},
                              labels=y[:16])  # fmt: skip
    assert any(terms.prototype.values()), "one modality must be the slow learner"

    def loss() -> Any:
        out = ce(inner(rows, training=True), y[:16])
        feats = extract(rows, training=True)
        for m in NAMES:
            c = tf.constant(prototypes[m])
            logits = -tf.sqrt(tf.reduce_sum(tf.square(feats[m][:, None, :] - c[None]), axis=-1))
            out = out + terms.prototype[m] * ce(logits, y[:16])
        return out

    want = sgd(hand, loss)
    recorded: list[dict[str, np.ndarray]] = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: recorded.append(params(model)))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    for i, m in enumerate(NAMES):  # after the epoch: the class means of the trained model's first batch
        np.testing.assert_allclose(model.pdmp_prototypes[i].numpy(), model.policy.prototypes()[m], rtol=0, atol=0)
    assert_params(recorded[0], want, EXACT, "PMR step")


# -- Diagnosing & Re-learning --------------------------------------------------------------------------------------


def test_diagnosing_relearning_moves_each_encoder_toward_its_initial_weights_by_the_cores_mix() -> None:
    """After epoch 1 (every=1) each encoder's trainable weights become mix * initial + (1 - mix) * trained, mix from
    the clustering purity of training vs held-out features; the head and the optimizer state are left alone."""
    x, y = make_data(SPEC, 48)
    held = make_data(SPEC, 30, seed=4)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.DiagnosingRelearning(NAMES, every=1, count=1)), 0.9)
    plain = compiled(keras_rebalancing_model(SPEC, pdmp.DiagnosingRelearning(NAMES, every=1, count=0)), 0.9)
    initial = params(plain)
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, held_out=held)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, held_out=held)
    inner = plain.inner_model
    extract = keras.Model(inner.inputs, {m: inner.get_layer(f"{m}_fc2").output for m in NAMES})
    mixes = {}
    for m in NAMES:
        train_features = np.asarray(extract(x, training=False)[m])
        held_features = np.asarray(extract(held[0], training=False)[m])
        mixes[m] = relearning_strength(
            clustering_purity(train_features, y, n_clusters=3), clustering_purity(held_features, held[1], n_clusters=3)
        )
    assert any(mix > 0 for mix in mixes.values()), mixes
    trained, got = params(plain), params(model)
    for key, value in trained.items():
        modality = key.split("_")[0]
        want = value if modality not in mixes else mixes[modality] * initial[key] + (1 - mixes[modality]) * value
        np.testing.assert_allclose(got[key], want, **EXACT, err_msg=key)
    for a, b in zip(model.optimizer.variables, plain.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"optimizer state {a.path}")


# -- MLA -----------------------------------------------------------------------------------------------------------


def test_mla_takes_one_step_per_modality_through_the_projected_shared_head() -> None:
    """One batch: pass audio (its encoder and the head; no projection on the very first pass), then pass image at
    the head's updated weights with the head kernel's gradient K -> P @ K (the core's G @ P.T), P from the core's
    projector; with momentum, the encoder a pass does not train does not move at all."""
    x, y = make_data(SPEC, 16)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.MLA(NAMES, projection="code")))
    hand = compiled(keras_rebalancing_model(SPEC, pdmp.MLA(NAMES, projection="code")))
    inner = hand.inner_model
    head = inner.get_layer("head")
    extract = keras.Model(inner.inputs, {m: inner.get_layer(f"{m}_fc2").output for m in NAMES})
    reference = pdmp.MLA(NAMES, projection="code")
    z = extract(x, training=True)
    for m in NAMES:
        variables = [v for layer in (f"{m}_fc1", f"{m}_fc2", "head") for v in inner.get_layer(layer).trainable_weights]
        with tf.GradientTape() as tape:
            loss = ce(head(extract(x, training=True)[m]), y)
        gradients = tape.gradient(loss, variables)
        matrix = reference.head_projection(np.asarray(z[m]), batch_index=0, n_batches=1)
        assert (matrix is None) == (m == "audio")
        if matrix is not None:
            gradients[-2] = tf.constant(matrix) @ gradients[-2]
        for variable, gradient in zip(variables, gradients, strict=True):
            variable.assign(variable - LR * gradient)
    want = params(hand)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_params(params(model), want, EXACT, "MLA step")
    assert model.step_count == 1 and int(model.optimizer.iterations.numpy()) == 2

    momentum = compiled(keras_rebalancing_model(SPEC, pdmp.MLA(NAMES, projection="code")), 0.9)
    before = params(momentum)
    momentum.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert all(not np.array_equal(params(momentum)[k], before[k]) for k in before)


def test_mla_predicts_the_fusion_weighted_sum_of_the_shared_heads_logits() -> None:
    x, _ = make_data(SPEC, 16)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.MLA(NAMES)))
    inner = model.inner_model
    extract = keras.Model(inner.inputs, {m: inner.get_layer(f"{m}_fc2").output for m in NAMES})
    logits = {m: np.asarray(inner.get_layer("head")(v)) for m, v in extract(x, training=False).items()}
    weights = entropy_fusion_weights(logits)
    want = sum(weights[m] * logits[m] for m in NAMES)
    np.testing.assert_allclose(model.predict(x, batch_size=16, verbose=0), want, rtol=1e-12)
    assert not np.allclose(want, np.asarray(inner(x)))  # not the model's own (summed) output


# -- wiring ----------------------------------------------------------------------------------------------------------


def test_missing_wiring_is_refused_naming_the_argument() -> None:
    from parity_models import encoder_layers, initial_weights, keras_model

    fused = keras_model(SPEC, initial_weights(SPEC))
    with pytest.raises(
        ValueError, match=r"PMR \(uses_prototypes\) reads each modality's encoder features.*modality_features="
    ):
        ModulatedModel(fused, encoder_layers(SPEC), pdmp.PMR(NAMES))
    with pytest.raises(ValueError, match=r"GBlending weighs each modality's own loss.*unimodal_logits="):
        ModulatedModel(fused, encoder_layers(SPEC), pdmp.GBlending(NAMES))
    with pytest.raises(
        ValueError, match=r"MLA trains and predicts every modality through one shared head.*shared_head="
    ):
        ModulatedModel(fused, encoder_layers(SPEC), pdmp.MLA(NAMES), modality_features={m: f"{m}_fc2" for m in NAMES})
    with pytest.raises(ValueError, match=r"modality_features= and shared_head= are for RebalancingPolicy"):
        ModulatedModel(fused, encoder_layers(SPEC), pdmp.PDMP(NAMES, "audio"), shared_head="head")
    x, y = make_data(SPEC, 16)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.DiagnosingRelearning(NAMES)))
    with pytest.raises(ValueError, match=r"measures held-out encoder features.*held_out="):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match=r"train with fit\(\)"):
        model.train_on_batch(x, y)
    mla = keras_rebalancing_model(SPEC, pdmp.MLA(NAMES))
    with pytest.raises(NotImplementedError, match=r"one optimizer step per training pass.*gradient_accumulation_steps"):
        mla.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2), loss=LOSS)


def test_prototype_logits_have_a_finite_gradient_where_a_sample_is_its_prototype() -> None:
    """Defect: a class seen once in the prototype batches has its one sample as prototype, at distance 0, where
    sqrt's gradient is infinite: the step turned NaN (seen on JAX). The gradient there is 0 (torch's cdist's)."""
    z = tf.Variable(np.array([[1.0, 2.0], [0.5, -1.0]]))
    prototypes = np.array([[1.0, 2.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        logits = _rebalancing.prototype_logits(z, prototypes)
        loss = tf.reduce_sum(logits)
    np.testing.assert_allclose(logits.numpy(), prototype_logits(z.numpy(), prototypes), rtol=1e-15)
    gradient = tape.gradient(loss, z).numpy()
    assert np.isfinite(gradient).all(), gradient
    np.testing.assert_allclose(gradient[0], -(np.array([1.0, 2.0]) / np.sqrt(5.0)), rtol=1e-15)  # only c_1 counts


def test_a_saved_mla_model_loads_with_its_wiring_and_predicts_the_same(tmp_path: Any) -> None:
    x, y = make_data(SPEC, 16)
    model = compiled(keras_rebalancing_model(SPEC, pdmp.MLA(NAMES, projection="code")))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "mla.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ModulatedModel) and loaded.policy == model.policy
    assert loaded._shared_head.value.name == "head" and loaded._features_spec.value == model._features_spec.value
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-12)
