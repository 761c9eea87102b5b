"""ModulatedModel: gradients, schedules, lr mode, mixed precision, saving, bad input (Keras 3 on TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from keras_helpers import keras, single_threaded, tf

from pdmp import OGMGE, PDMP, AdaptivePDMP, NoModulation
from pdmp.backends.keras import ModulatedModel

single_threaded()
pytestmark = pytest.mark.keras

NAMES = ["audio", "visual"]
ENCODERS = {"audio": "audio_enc", "visual": "visual_enc"}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build(seed: int = 0, dtype: str | None = None) -> keras.Model:
    """Two encoders (3 -> 5, 4 -> 5), concat fusion, a 3-class head; deterministic weights."""
    keras.utils.set_random_seed(seed)
    a = keras.Input((3,), name="a")
    v = keras.Input((4,), name="v")
    fa = keras.layers.Dense(5, activation="tanh", name="audio_enc", dtype=dtype)(a)
    fv = keras.layers.Dense(5, activation="tanh", name="visual_enc", dtype=dtype)(v)
    fused = keras.layers.Concatenate(name="concat")([fa, fv])
    out = keras.layers.Dense(3, name="head", dtype="float32")(fused)
    return keras.Model({"a": a, "v": v}, out, name="fused")


def data(n: int = 16, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {"a": rng.normal(size=(n, 3)).astype("float32"), "v": rng.normal(size=(n, 4)).astype("float32")}
    return x, rng.integers(0, 3, n)


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.trainable_weights}


def gradients(model: keras.Model, x: dict[str, np.ndarray], y: np.ndarray) -> dict[str, np.ndarray]:
    """Reference gradients of the mean cross-entropy, computed outside the adapter."""
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    return {v.path: g.numpy() for v, g in zip(model.trainable_weights, grads, strict=True)}


def modality_of(path: str) -> str | None:
    return next((name for name, layer in ENCODERS.items() if path.startswith(layer + "/")), None)


def wrap(policy: object, model: keras.Model | None = None, **options: object) -> ModulatedModel:
    return ModulatedModel(model or build(), ENCODERS, policy, **options)  # type: ignore[arg-type]


def compile_(model: keras.Model, optimizer: object, **options: object) -> keras.Model:
    model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"], jit_compile=False, **options)
    return model


# -- gradients ------------------------------------------------------------------------------------------


def test_grad_mode_step_equals_manual_scaling() -> None:
    x, y = data()
    model = compile_(wrap(PDMP(NAMES, "audio", gamma_p=3.0, gamma_r=0.5)), keras.optimizers.SGD(0.1))
    before, grads = weights(model), gradients(model.inner_model, x, y)
    history = model.fit(x, y, batch_size=len(y), epochs=1, shuffle=False, verbose=0)
    k = {"audio": 3.0, "visual": 0.5, None: 1.0}
    for path, value in weights(model).items():
        expected = before[path] - 0.1 * k[modality_of(path)] * grads[path]
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=path)
    assert set(history.history) == {"loss", "accuracy"}  # fit()'s metrics and History still work
    assert model.coefficients == {"audio": 3.0, "visual": 0.5}


def test_warmup_is_untouched_then_modulated() -> None:
    x, y = data()
    plain = compile_(build(), keras.optimizers.SGD(0.05, momentum=0.9))
    model = compile_(wrap(PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, warmup=1)), keras.optimizers.SGD(0.05, 0.9))
    plain.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert model.coefficients == {"audio": 1.0, "visual": 1.0}
    for path, value in weights(plain).items():
        np.testing.assert_allclose(weights(model)[path], value, rtol=1e-6, atol=1e-7, err_msg=path)
    model.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    assert model.coefficients == {"audio": 4.0, "visual": 0.5}
    assert model.state_dict()["clock"] == {"step": 8, "epoch": 1}


def test_fit_changes_encoders_at_expected_relative_rates() -> None:
    """A few fit() steps: the audio/visual update ratio is gamma_p/gamma_r times the unmodulated one."""
    x, y = data(32)

    def moved(policy: object) -> dict[str, float]:
        model = compile_(wrap(policy), keras.optimizers.SGD(1e-3))
        start = weights(model)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        end = weights(model)
        return {
            name: float(sum(np.linalg.norm(end[p] - start[p]) for p in start if modality_of(p) == name))
            for name in NAMES
        }

    plain = moved(NoModulation(NAMES))
    prioritised = moved(PDMP(NAMES, "visual", gamma_p=10.0, gamma_r=0.5))
    rate = (prioritised["visual"] / prioritised["audio"]) / (plain["visual"] / plain["audio"])
    assert rate == pytest.approx(10.0 / 0.5, rel=0.02)


def test_step_schedule_follows_the_core_policy_batch_by_batch() -> None:
    x, y = data()
    policy = PDMP(NAMES, "audio", gamma_p=5.0, gamma_r=0.5, warmup=2, unit="step", ramp=2, end=5)
    model = compile_(wrap(policy), keras.optimizers.SGD(0.01))
    seen: list[dict[str, float]] = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(model.coefficients))
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    # Worked by hand: warm-up steps 0-1, ramp over steps 2-3 (halfway at step 2), end at step 5.
    one, half, full = {"audio": 1.0, "visual": 1.0}, {"audio": 3.0, "visual": 0.75}, {"audio": 5.0, "visual": 0.5}
    assert seen == [one, one, half, full, full, one, one, one]
    assert int(model.pdmp_step.numpy()) == 8


# -- lr mode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}], ids=["plain", "momentum-wd"]
)
def test_lr_mode_equals_grad_mode_under_keras_sgd(options: dict) -> None:
    """Keras's SGD uses lr * g only as a product and decays weights decoupled: the modes agree, even mid-ramp."""
    x, y = data()
    policy = PDMP(NAMES, "visual", gamma_p=6.0, gamma_r=0.25, unit="step", warmup=1, ramp=3)
    by_grad = compile_(wrap(policy), keras.optimizers.SGD(0.05, **options))
    by_lr = compile_(wrap(policy, mode="lr"), keras.optimizers.SGD(0.05, **options))
    for model in (by_grad, by_lr):
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for path, value in weights(by_grad).items():
        np.testing.assert_allclose(weights(by_lr)[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_lr_mode_is_a_learning_rate_multiplier_under_adam_and_grad_mode_is_not() -> None:
    x, y = data()
    reference = compile_(build(), keras.optimizers.Adam(1e-2))
    start = weights(reference)
    reference.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    plain_step = {p: weights(reference)[p] - start[p] for p in start}
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5)
    k = {"audio": 4.0, "visual": 0.5, None: 1.0}
    for mode in ("lr", "grad"):
        model = compile_(wrap(policy, mode=mode), keras.optimizers.Adam(1e-2))
        model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
        for path, value in weights(model).items():
            step = value - start[path]
            if mode == "lr":
                np.testing.assert_allclose(step, k[modality_of(path)] * plain_step[path], rtol=1e-4, atol=1e-7)
            else:  # Adam normalises a gradient multiplier away (up to its epsilon): almost the plain step
                np.testing.assert_allclose(step, plain_step[path], rtol=5e-3, atol=1e-6, err_msg=path)


# -- mixed precision -------------------------------------------------------------------------------------


def test_loss_scale_optimizer_gives_the_same_step_including_ogm_noise() -> None:
    """Coefficients commute with loss scaling; OGM-GE's noise is drawn from the unscaled gradient."""
    from pdmp.backends.keras import ConcatHead

    x, y = data()
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    results = []
    for optimizer in (keras.optimizers.SGD(0.1), keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))):
        model = compile_(wrap(OGMGE(NAMES, alpha=0.5), modality_logits=spec, seed=3), optimizer)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append(weights(model))
    for path, value in results[0].items():
        np.testing.assert_allclose(results[1][path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_mixed_float16_encoders_train_with_autowrapped_loss_scaling() -> None:
    """Compares updates, not weights: a dropped gamma_r (update 0.5x off) must fail, float16 noise must not."""
    x, y = data()
    model = wrap(PDMP(NAMES, "audio", gamma_p=3.0, gamma_r=0.5), build(dtype="mixed_float16"))
    compile_(model, keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    before, grads = weights(model), gradients(model.inner_model, x, y)
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    k = {"audio": 3.0, "visual": 0.5, None: 1.0}
    for path, value in weights(model).items():
        update, expected = value - before[path], -0.1 * k[modality_of(path)] * grads[path]
        # The reference runs the same float16 forward pass: measured error 3e-6 of the largest update;
        # a wrong coefficient is off by 50% or more.
        np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=path)


# -- saving -------------------------------------------------------------------------------------------


def test_keras_file_round_trip_keeps_policy_clock_coefficients_and_weights(tmp_path: object) -> None:
    x, y = data()
    policy = PDMP(NAMES, "visual", gamma_p=8.0, gamma_r=0.5, warmup=1, ramp=3)
    model = compile_(wrap(policy, mode="lr"), keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ModulatedModel)
    assert loaded.policy == policy and loaded.mode == "lr"
    assert loaded.state_dict() == model.state_dict()
    assert loaded.state_dict()["coefficients"]["visual"] == pytest.approx(1 + 7 * 2 / 3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    for name in NAMES:
        assert [v.path for v in loaded.modality_variables[name]] == [v.path for v in model.modality_variables[name]]
    # Training resumes identically: same optimizer state, same schedule.
    for m in (model, loaded):
        m.fit(x, y, batch_size=4, epochs=4, initial_epoch=3, shuffle=False, verbose=0)
    for path_, value in weights(model).items():  # the same computation from the same state: bit for bit
        np.testing.assert_array_equal(weights(loaded)[path_], value, err_msg=path_)
    assert loaded.coefficients == model.coefficients == {"audio": 0.5, "visual": 8.0}


def test_state_dict_round_trip_and_policy_mismatch() -> None:
    model = wrap(PDMP(NAMES, "audio", warmup=2))
    model.set_epoch(3)
    state = model.state_dict()
    other = wrap(PDMP(NAMES, "audio", warmup=2))
    other.load_state_dict(state)
    assert other.state_dict() == state and other.coefficients == {"audio": 10.0, "visual": 0.5}
    with pytest.raises(ValueError, match="build the model with the saved policy"):
        wrap(PDMP(NAMES, "visual", warmup=2)).load_state_dict(state)


# -- bad input -----------------------------------------------------------------------------------------


def test_variable_in_two_modalities_is_refused() -> None:
    model = build()
    with pytest.raises(ValueError, match=r"'head/kernel' is claimed by modalities 'audio' and 'visual'"):
        groups = {"audio": ["audio_enc", "head"], "visual": ["visual_enc", "head/kernel"]}
        ModulatedModel(model, groups, PDMP(NAMES, "audio"))


def test_empty_modality_is_refused_and_a_frozen_one_is_kept() -> None:
    model = build()
    model.get_layer("visual_enc").trainable = False  # frozen now, modulated once unfrozen
    kept = ModulatedModel(model, ENCODERS, PDMP(NAMES, "audio"))
    assert [v.path for v in kept.modality_variables["visual"]] == ["visual_enc/kernel", "visual_enc/bias"]
    with pytest.raises(ValueError, match="modality 'visual' has no trainable variables"):
        ModulatedModel(build(), {"audio": "audio_enc", "visual": []}, PDMP(NAMES, "audio"))


def test_names_that_disagree_with_the_policy_are_refused() -> None:
    message = r"unknown modality\(ies\) \['audoi'\] and missing modality\(ies\) \['audio'\]"
    with pytest.raises(ValueError, match=message):
        ModulatedModel(build(), {"audoi": "audio_enc", "visual": "visual_enc"}, PDMP(NAMES, "audio"))
    with pytest.raises(ValueError, match="has no layer or variable 'audio_encoder'; layers: "):
        ModulatedModel(build(), {"audio": "audio_encoder", "visual": "visual_enc"}, PDMP(NAMES, "audio"))


def test_other_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="mode must be 'grad' or 'lr', got 'param'"):
        wrap(PDMP(NAMES, "audio"), mode="param")
    with pytest.raises(TypeError, match="pdmp CoefficientPolicy"):
        wrap({"gamma_p": 10})
    with pytest.raises(ValueError, match="OGMGE needs per-modality logits"):
        wrap(OGMGE(NAMES))
    with pytest.raises(ValueError, match="AdaptivePDMP learns from per-modality logits: pass modality_logits="):
        wrap(AdaptivePDMP(NAMES, {"audio": 0.8, "visual": 0.5}))
    stranger = keras.Variable(np.zeros(3, "float32"), name="stranger")
    with pytest.raises(ValueError, match="is not a variable of model 'fused'"):
        ModulatedModel(build(), {"audio": stranger, "visual": "visual_enc"}, PDMP(NAMES, "audio"))
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="is not built"):
        ModulatedModel(unbuilt, ENCODERS, PDMP(NAMES, "audio"))


def test_other_keras_backends_are_refused_with_the_reason() -> None:
    """Keras's numpy backend cannot train; the error names it, the supported backends and the alternative."""
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    result = subprocess.run(
        [sys.executable, "-c", "import pdmp.backends.keras"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ImportError: pdmp.backends.keras supports KERAS_BACKEND in ['tensorflow', 'jax']" in result.stderr
    assert "running on 'numpy'" in result.stderr and "pdmp.backends.torch" in result.stderr


def test_a_modality_holding_the_head_layer_is_refused() -> None:
    """The layer producing the output is the head, never modulated: also behind an activation layer."""
    with pytest.raises(ValueError, match=r"modality 'audio' includes 'head/kernel' of layer 'head', which produces"):
        ModulatedModel(build(), {"audio": ["audio_enc", "head"], "visual": "visual_enc"}, PDMP(NAMES, "audio"))
    inner = build()
    probabilities = keras.Model(inner.inputs, keras.layers.Softmax(name="softmax")(inner.output))
    with pytest.raises(ValueError, match=r"'head/bias' of layer 'head', which produces the output of model"):
        ModulatedModel(
            probabilities, {"audio": "audio_enc", "visual": ["visual_enc", "head/bias"]}, PDMP(NAMES, "audio")
        )
    ModulatedModel(probabilities, ENCODERS, PDMP(NAMES, "audio"))  # the encoders alone are fine
