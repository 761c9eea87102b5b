"""GradientPolicies (AGM, MMPareto, InfoReg, ARL, your own) in ``ModulatedModel``: the in-graph parts
against the NumPy core, resuming from a ``.keras`` file, and the errors for bad wiring.

The torch-vs-Keras training parity of each baseline is ``tests/test_parity_transforms.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from keras_helpers import keras, single_threaded, tf

single_threaded()

from parity_models import TWO, encoder_layers, initial_weights, keras_model, make_data, names_of  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.keras import ConcatHead, ModulatedModel, SumHeads, _transforms  # noqa: E402
from pdmp.transforms import GradientTransform, apply_transform, gradient_statistics, logit_statistics  # noqa: E402

pytestmark = pytest.mark.keras

NAMES = names_of(TWO)
DECOMPOSED = ConcatHead("head", {name: f"{name}_fc2" for name in NAMES})
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
LOSS32 = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, BATCH = 32, 8


def wrap(policy: Any, **options: Any) -> ModulatedModel:
    return ModulatedModel(keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), policy, **options)


def compiled(model: ModulatedModel, loss: Any = LOSS) -> ModulatedModel:
    model.compile(optimizer=keras.optimizers.SGD(2.0**-5, momentum=0.9), loss=loss)
    return model


# -- the in-graph twins of the core's references ---------------------------------------------------------------


def test_in_graph_logit_statistics_equal_the_cores() -> None:
    rng = np.random.default_rng(0)
    logits = {"audio": rng.normal(size=(7, 4)) * 30.0, "image": rng.normal(size=(7, 4))}  # large: stable softmax
    labels = rng.integers(0, 4, 7)
    got = _transforms.logit_statistics([tf.constant(logits[m]) for m in NAMES], tf.constant(labels), dtype="float64")
    want = logit_statistics(logits, labels)
    for i, name in enumerate(NAMES):
        values = [want[name][stat] for stat in pdmp.transforms.LOGIT_STATISTICS]
        np.testing.assert_allclose(got.numpy()[i], values, rtol=1e-13, atol=1e-13, err_msg=name)
    one_hot = _transforms.logit_statistics(
        [tf.constant(logits[m]) for m in NAMES], tf.constant(np.eye(4)[labels]), dtype="float64"
    )
    np.testing.assert_array_equal(one_hot.numpy(), got.numpy())


def test_in_graph_gradient_statistics_and_transform_equal_the_cores() -> None:
    rng = np.random.default_rng(1)
    shapes = [(3, 3, 1, 4), (4,), (4, 6), (6,)]
    fused = [rng.normal(size=s) for s in shapes]
    unimodal = [rng.normal(size=s) for s in shapes]
    unimodal[1] = np.zeros((4,))  # a tensor the unimodal loss does not reach
    params = [rng.normal(size=s) for s in shapes]
    anchors = [p + rng.normal(size=p.shape) * 0.1 for p in params]
    for separate in (True, False):
        got = _transforms.gradient_statistics(
            [tf.constant(g) for g in fused], [tf.constant(u) for u in unimodal] if separate else None, dtype="float64"
        )
        want = gradient_statistics(fused, unimodal if separate else None)
        np.testing.assert_allclose(got.numpy(), list(want.values()), rtol=1e-13, err_msg=f"separate={separate}")
    zero = [np.zeros(s) for s in shapes]  # a combined gradient of exactly 0 stays 0
    for g in (fused, zero):
        for transform in (
            GradientTransform(fused={"audio": 0.3}, unimodal={"audio": 1.7}, magnitude={"audio": 1.5},
                              floor_to_sum={"audio": True}),
            GradientTransform(fused={"audio": 1.2}, unimodal={"audio": 0.4}, anchor={"audio": 0.7}),
        ):  # fmt: skip
            row = tf.constant(transform.as_array(["audio"])[0])
            plain = [a + b for a, b in zip(g, unimodal, strict=True)]
            tensors = [[tf.constant(v) for v in values] for values in (g, plain, unimodal, params, anchors)]
            got = _transforms.transformed(row, *tensors)
            want = apply_transform(transform, "audio", g, unimodal, params, anchors)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-13, atol=1e-15)


# -- training -------------------------------------------------------------------------------------------------


def test_fit_reports_the_transforms_coefficient_and_keeps_the_policy_state_in_a_variable() -> None:
    x, y = make_data(TWO, N)
    model = compiled(wrap(pdmp.AGM(NAMES), modality_logits=DECOMPOSED))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    policy = model.policy
    assert policy.steps == N // BATCH
    want = {m: policy.last_transform.coefficient(m) for m in NAMES}
    assert model.coefficients == pytest.approx(want, rel=1e-15)
    assert model.coefficients != {m: 1.0 for m in NAMES}
    state = model.state_dict()["policy_state"]
    policy.reset()  # the variable, not the Python object, holds the state
    assert model.state_dict()["policy_state"] == state


@pytest.fixture
def deterministic_ops() -> Any:
    """TensorFlow's deterministic kernels for one test, then the previous setting: two runs compared bit for
    bit must not depend on the order in which threads sum (some CPU kernels, e.g. those aggregating
    gathered slices' gradients, do otherwise)."""
    from tensorflow.python.framework import config

    enabled = config.is_op_determinism_enabled()
    config.enable_op_determinism()
    yield
    if not enabled:
        config.disable_op_determinism()


def test_a_run_resumed_from_a_keras_file_mid_epoch_continues_exactly(tmp_path: Any, deterministic_ops: Any) -> None:
    """InfoReg: its state (the traces) and its epoch-start anchors are saved with the model; re-announcing the
    interrupted epoch keeps the saved anchors."""
    x, y = make_data(TWO, N)
    steps = [slice(i, i + BATCH) for i in range(0, N, BATCH)]

    def run(interrupt: tuple[int, int] | None) -> tuple[list[np.ndarray], list[float]]:
        # The loss's default dtype: a .keras file does not keep a loss's dtype (Keras reloads it as float32).
        policy = pdmp.InfoReg(NAMES, window=1)
        model = compiled(wrap(policy, modality_logits=DECOMPOSED, unimodal_logits=DECOMPOSED), loss=LOSS32)
        pulls = []
        for epoch in range(3):
            model.set_epoch(epoch)
            for index, rows in enumerate(steps):
                if (epoch, index) == interrupt:
                    path = tmp_path / "interrupted.keras"
                    model.save(path)
                    model = keras.models.load_model(path)
                    model.set_epoch(epoch)  # what a resumed loop (or fit(initial_epoch=epoch)) does
                model.train_on_batch({k: v[rows] for k, v in x.items()}, y[rows])
                pulls.append(model.policy.last_transform.anchor["audio"])
        return [np.array(v) for v in model.inner_model.get_weights()], pulls

    # Two fresh runs in one process have, rarely and only deep in the whole suite, parted at the first
    # step, long before any save: in 2 of 11 suite runs one of the two (either) took one other trajectory,
    # the same one on two machines; 8 more fresh runs right after a failure agreed. Its cause is not
    # found (not threads, not kernels, not the resume). A pair that parts before the save says nothing about
    # resuming, so it is drawn again (at most 3 pairs); a pair that agrees up to the save must agree after.
    saved_at = len(steps) + 2
    for _ in range(3):
        reference, pulls = run(None)
        resumed, resumed_pulls = run((1, 2))
        if resumed_pulls[:saved_at] == pulls[:saved_at]:
            break
        warnings.warn(
            f"two fresh InfoReg runs parted before the save ({pulls[1]!r} vs {resumed_pulls[1]!r} at step 1)",
            stacklevel=1,
        )
    else:
        pytest.fail(
            f"3 pairs of identical runs parted before the save: {pulls[:saved_at]} vs {resumed_pulls[:saved_at]}"
        )
    assert any(pulls[len(steps) : 2 * len(steps)]), "the anchor must matter in the interrupted epoch"
    assert resumed_pulls[saved_at:] == pulls[saved_at:]
    for a, b in zip(resumed, reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unimodal_gradients_are_kept_apart_and_the_heads_train_on_their_losses() -> None:
    """MMPareto on a model whose unimodal heads are part of it: G and U of each encoder are combined, and
    the heads move (they get the plain gradient of their unimodal loss)."""
    from parity_models import _unimodal_head_logits, _with_unimodal_heads, unimodal_head_weights

    weights = {**initial_weights(TWO), **unimodal_head_weights(TWO)}
    inner = _with_unimodal_heads(keras_model(TWO, weights), TWO, weights)
    model = compiled(
        ModulatedModel(inner, encoder_layers(TWO), pdmp.MMPareto(NAMES), unimodal_logits=_unimodal_head_logits)
    )
    heads = [np.array(v) for v in inner.unimodal_heads["audio"].get_weights()]
    x, y = make_data(TWO, N)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    transform = model.policy.last_transform
    assert transform.floor_to_sum == {m: True for m in NAMES} and transform.unimodal["audio"] > 0
    assert any((a != b).any() for a, b in zip(inner.unimodal_heads["audio"].get_weights(), heads, strict=True))


# -- errors ---------------------------------------------------------------------------------------------------


def test_a_policy_needing_unimodal_gradients_without_unimodal_logits_is_refused() -> None:
    with pytest.raises(ValueError, match=r"MMPareto .*unimodal_logits="):
        wrap(pdmp.MMPareto(NAMES))


def test_a_policy_needing_logits_without_modality_logits_is_refused() -> None:
    for policy in (pdmp.InfoReg(NAMES), pdmp.AGM(NAMES), pdmp.ARL(NAMES)):
        with pytest.raises(ValueError, match=rf"{policy.kind} needs .*modality_logits="):
            wrap(policy)


def test_lr_mode_is_refused_for_gradient_policies() -> None:
    with pytest.raises(ValueError, match=r"AGM is a GradientPolicy.*use mode='grad'"):
        wrap(pdmp.AGM(NAMES), mode="lr", modality_logits=DECOMPOSED)


def test_a_unimodal_spec_naming_an_unknown_modality_is_refused() -> None:
    spec = SumHeads({"audio": "audio_fc2", "video": "image_fc2"})
    with pytest.raises(ValueError, match=r"unimodal_logits SumHeads .*unknown modality\(ies\) \['video'\]"):
        wrap(pdmp.MMPareto(NAMES), unimodal_logits=spec)
    x, y = make_data(TWO, N)
    model = compiled(wrap(pdmp.MMPareto(NAMES), unimodal_logits=lambda m, inputs, t: {"video": m(inputs)}))
    with pytest.raises(ValueError, match=r"unimodal_logits: unknown modality\(ies\) \['video'\]"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def test_unimodal_logits_of_the_wrong_shape_are_refused_naming_the_modality() -> None:
    x, y = make_data(TWO, N)

    def wide(model: Any, inputs: Any, training: bool) -> dict[str, Any]:
        out = model(inputs, training=training)
        return {"audio": out, "image": keras.ops.concatenate([out, out], axis=-1)}

    model = compiled(wrap(pdmp.MMPareto(NAMES), unimodal_logits=wide))
    with pytest.raises(ValueError, match=r"unimodal_logits\['image'\] has shape \(\w+, 6\).*\(\w+, 3\)"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def test_a_unimodal_loss_that_misses_its_encoder_is_refused() -> None:
    x, y = make_data(TWO, N)

    def swapped(model: Any, inputs: Any, training: bool) -> dict[str, Any]:
        parts = pdmp.backends.keras.concat_head_logits(
            model.get_layer("head"),
            {n: keras.ops.zeros((keras.ops.shape(inputs["audio"])[0], 6), "float64") for n in NAMES},
        )
        return parts

    model = compiled(wrap(pdmp.MMPareto(NAMES), unimodal_logits=swapped))
    with pytest.raises(ValueError, match=r"unimodal_logits\['audio'\] does not depend on modality 'audio'"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def test_custom_loops_and_xla_are_refused_or_switched_off_clearly() -> None:
    model = wrap(pdmp.AGM(NAMES), modality_logits=DECOMPOSED)
    with pytest.raises(RuntimeError, match=r"AGM is a GradientPolicy.*train_on_batch"):
        model.modulate_gradients([], [])
    with pytest.raises(RuntimeError, match=r"AGM is a GradientPolicy.*observe"):
        model.observe({m: np.zeros((2, 3)) for m in NAMES}, np.zeros(2, int))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer="sgd", loss=LOSS, jit_compile=True)
    assert any("jit_compile=True" in str(w.message) for w in caught)
    assert model.jit_compile is False
