"""The Keras adapter on Keras's JAX backend: the stateless step modulates as the core says.

Runs where Keras runs on JAX (``KERAS_BACKEND=jax``, the ``tests-keras-jax`` session; skipped on
TensorFlow). JAX's default configuration is used (no ``jax_enable_x64``, so float32 models, float32
coefficients and int32 counters); ``tests/test_parity_jax.py`` runs the float64 parity model under
``jax_enable_x64`` against the TensorFlow path. The reference everywhere is the NumPy core: coefficients
come from ``policy.modulation``/``policy.coefficients`` on logits replayed outside the step, updates
from the one identity that holds exactly for plain SGD (a modulated encoder moves ``k`` times as far).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
jax = pytest.importorskip("jax")
if keras.backend.backend() != "jax":
    pytest.skip("needs KERAS_BACKEND=jax (nox -s tests-keras-jax)", allow_module_level=True)

from pdmp import OGMGE, PDMP, AdaptivePDMP, NoModulation  # noqa: E402
from pdmp.backends.keras import (  # noqa: E402
    ConcatHead,
    ModulatedModel,
    PDMPLogger,
    _ogm,
    concat_head_logits,
)
from pdmp.diagnostics import modality_scores  # noqa: E402
from pdmp.policies import OGM_NOISE_EPS  # noqa: E402

pytestmark = pytest.mark.keras

NAMES = ("audio", "image")
ENCODERS = {"audio": "audio_enc", "image": "image_enc"}
SPEC = ConcatHead("head", {"audio": "audio_enc", "image": "image_enc"})
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, BATCH = 32, 8  # 4 steps per epoch
#: float32 model and coefficients: the same value computed by two float32 paths agrees to a few ulps.
F32 = {"rtol": 2e-6, "atol": 1e-7}


def build(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    a, v = keras.Input((6,), name="a"), keras.Input((5,), name="v")
    fa = keras.layers.Dense(8, activation="tanh", name="audio_enc")(a)
    fv = keras.layers.Dense(8, activation="tanh", name="image_enc")(v)
    fused = keras.layers.Concatenate(name="concat")([fa, fv])
    return keras.Model({"a": a, "v": v}, keras.layers.Dense(3, name="head")(fused), name="fused")


def data(n: int = N, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    image = rng.normal(size=(n, 5)) + 3.0 * np.eye(3, 5)[y]  # easy: the image branch learns fast
    return {"a": rng.normal(size=(n, 6)).astype("float32"), "v": image.astype("float32")}, y


def wrap(policy: object, mode: str = "grad", model: keras.Model | None = None, **options: object) -> ModulatedModel:
    if getattr(policy, "needs_logits", False) or getattr(policy, "observes_scores", False):
        options.setdefault("modality_logits", SPEC)
    return ModulatedModel(model or build(), ENCODERS, policy, mode=mode, **options)  # type: ignore[arg-type]


def compile_(model: keras.Model, optimizer: object = None) -> keras.Model:
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    return model


class Recorder(keras.callbacks.Callback):
    """Per step: the coefficients in force, and the per-modality logits of the batch before its update."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.seen: list[dict[str, float]] = []
        self.logits: list[dict[str, np.ndarray]] = []
        self.labels: list[np.ndarray] = []
        self.after: list[dict[str, float]] = []

    def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
        model = self.model  # on JAX this brings the running fit()'s values into the variables
        self.seen.append(model.coefficients)
        rows = slice(batch * BATCH, (batch + 1) * BATCH)
        inner = model.inner_model
        features = {
            "audio": inner.get_layer("audio_enc")(self.x["a"][rows]),
            "image": inner.get_layer("image_enc")(self.x["v"][rows]),
        }
        logits = concat_head_logits(inner.get_layer("head"), features)
        self.logits.append({name: np.asarray(value, dtype=np.float64) for name, value in logits.items()})
        self.labels.append(self.y[rows])

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.after.append(self.model.coefficients)


def fit(model: ModulatedModel, epochs: int, **options: object) -> Recorder:
    x, y = data()
    recorder = Recorder(x, y)
    callbacks = [*options.pop("callbacks", []), recorder]  # type: ignore[misc]
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **options)
    return recorder


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.trainable_weights}


# -- the step, the clock and the schedule ---------------------------------------------------------------


def test_the_jax_step_is_stateless_and_the_variables_fit_jax_dtypes() -> None:
    import inspect

    model = wrap(PDMP(NAMES, "audio"))
    assert list(inspect.signature(model.train_step).parameters) == ["state", "data"]
    wide = "float64" if jax.config.jax_enable_x64 else "float32"
    assert model.pdmp_coefficients.dtype == wide and np.asarray(model.pdmp_coefficients.value).dtype == wide
    assert np.asarray(model.pdmp_step.value).dtype == ("int64" if jax.config.jax_enable_x64 else "int32")


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_every_steps_coefficients_follow_the_core_schedule_and_the_clock_counts(mode: str) -> None:
    policy = PDMP(NAMES, "audio", 4.0, 0.5, unit="step", warmup=2, ramp=3)
    model = compile_(wrap(policy, mode), keras.optimizers.SGD(0.05) if mode == "grad" else keras.optimizers.Adam(0.01))
    history_logger = PDMPLogger()
    record = fit(model, epochs=3, callbacks=[history_logger])
    rows = [policy.modulation(step=step, epoch=step // 4).coefficients for step in range(12)]
    wide = np.float64 if jax.config.jax_enable_x64 else np.float32  # the coefficient variable's dtype
    assert record.seen == [{name: float(wide(value)) for name, value in row.items()} for row in rows]
    assert model.step_count == 12 and model.epoch == 2
    assert model.coefficients == {"audio": 4.0, "image": 0.5}
    logged = model.history.history
    assert logged["pdmp/coef_audio"][-1] == pytest.approx(4.0) and logged["pdmp/coef_image"][0] < 1.0


def test_train_on_batch_counts_its_steps_and_set_epoch_moves_the_schedule() -> None:
    policy = PDMP(NAMES, "audio", 4.0, 0.5, warmup=1)
    model = compile_(wrap(policy))
    x, y = data()
    model.set_epoch(0)
    model.train_on_batch({k: v[:8] for k, v in x.items()}, y[:8])
    assert model.step_count == 1 and model.coefficients == {"audio": 1.0, "image": 1.0}
    model.set_epoch(1)
    model.train_on_batch({k: v[:8] for k, v in x.items()}, y[:8])
    assert model.step_count == 2 and model.epoch == 1 and model.coefficients == {"audio": 4.0, "image": 0.5}


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_an_sgd_step_moves_each_encoder_k_times_as_far_and_the_head_as_far(mode: str) -> None:
    """Plain SGD: ``-lr * k * g`` for a modality's variables, ``-lr * g`` for the head, in both modes."""
    x, y = data()
    batch = ({k: v[:8] for k, v in x.items()}, y[:8])
    moves = {}
    for name, policy in (("plain", NoModulation(NAMES)), ("pdmp", PDMP(NAMES, "audio", 4.0, 0.5))):
        model = compile_(wrap(policy, mode), keras.optimizers.SGD(2.0**-4))
        before = weights(model)
        model.set_epoch(0)
        model.train_on_batch(*batch)
        moves[name] = {key: value - before[key] for key, value in weights(model).items()}
    k = {"audio_enc": 4.0, "image_enc": 0.5, "head": 1.0}
    for key, plain in moves["plain"].items():
        factor = k[key.split("/")[0]]
        assert np.abs(plain).max() > 1e-3, f"{key} must move for the comparison to mean anything"
        # A move is a difference of float32 weights (|w| < 2), each off by half an ulp: 2**-23 absolute,
        # times k for the scaled one; a wrong k would be off by a third of the move or more.
        np.testing.assert_allclose(moves["pdmp"][key], factor * plain, rtol=1e-5, atol=(factor + 1) * 2.0**-23,
                                   err_msg=key)  # fmt: skip


# -- OGM-GE -----------------------------------------------------------------------------------------------


def test_ogmge_coefficients_are_the_cores_from_each_batchs_logits() -> None:
    policy = OGMGE(NAMES, alpha=0.8, noise=False)
    model = compile_(wrap(policy))
    record = fit(model, epochs=2)
    slowed = 0
    for step, (logits, labels, got) in enumerate(zip(record.logits, record.labels, record.after, strict=True)):
        scores = modality_scores(logits, labels)
        if any(abs(ratio - 1.0) < 1e-4 for ratio in policy.ratios(scores).values()):
            continue  # float32 vs float64 may fall on either side of the rho > 1 threshold
        want = policy.coefficients(logits=logits, labels=labels)
        slowed += min(want.values()) < 1.0
        for name in NAMES:
            assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-6), f"step {step} {name}"
    assert slowed >= 6, "OGM-GE must slow a modality on most steps for the comparison to mean anything"


def test_ogmge_noise_has_the_reference_scale_and_is_reproducible_by_seed() -> None:
    """``modulated - k * g`` has mean 0 and std ``std(g) + 1e-8`` (sample std), drawn from (seed, step, variable)."""
    model = wrap(OGMGE(NAMES, alpha=0.8), seed=3)
    compile_(model)
    model.set_epoch(0)
    variables = list(model.modality_variables["audio"]) + list(model.modality_variables["image"])
    rng = np.random.default_rng(0)
    gradients = [rng.normal(scale=0.01, size=tuple(v.shape)).astype("float32") for v in variables]
    coefficients = np.array([1.0, 0.25], dtype=model.pdmp_coefficients.dtype)
    audio = {id(v) for v in model.modality_variables["audio"]}
    position = {id(v): 0 if id(v) in audio else 1 for v in variables}

    def noise_at(step: int) -> list[np.ndarray]:
        model.pdmp_step.assign(step)
        out = model.modulate_gradients(gradients, variables, coefficients=coefficients)
        return [
            np.asarray(o) - coefficients[position[id(v)]] * g for o, v, g in zip(out, variables, gradients, strict=True)
        ]

    draws = [noise_at(step) for step in range(200)]
    for index, gradient in enumerate(gradients):
        samples = np.concatenate([draw[index].ravel() for draw in draws])
        expected = float(np.std(gradient, ddof=1)) + OGM_NOISE_EPS
        assert abs(samples.std() / expected - 1.0) < 5.0 / np.sqrt(2 * samples.size), variables[index].path
        assert abs(samples.mean()) < 5.0 * expected / np.sqrt(samples.size)
    again = noise_at(7)
    np.testing.assert_array_equal(again[0], draws[7][0])  # the same (seed, step, variable): the same noise
    assert not np.array_equal(draws[7][0], draws[8][0])


def test_ogmge_fit_with_noise_is_reproducible_and_the_seed_matters() -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = compile_(wrap(OGMGE(NAMES, alpha=0.8), seed=seed))
        fit(model, epochs=1)
        runs[name] = weights(model)
    for key in runs["a"]:
        np.testing.assert_array_equal(runs["a"][key], runs["b"][key])
    assert any(not np.array_equal(runs["a"][key], runs["c"][key]) for key in runs["a"] if "enc" in key)


def test_out_of_range_labels_fail_the_step_naming_the_problem() -> None:
    model = compile_(wrap(OGMGE(NAMES, alpha=0.8)))
    x, _ = data()
    bad = jax.numpy.asarray(np.full(N, 5))  # not NumPy: only the in-graph check sees it
    with pytest.raises(Exception, match="a label >= the logits' width"):
        model.fit(x, bad, batch_size=BATCH, epochs=1, verbose=0)


def test_ogm_formula_in_keras_ops_matches_the_core_on_jax() -> None:
    rng = np.random.default_rng(1)
    names = ["m0", "m1", "m2"]
    logits = {name: rng.normal(scale=3.0, size=(10, 4)) for name in names}
    labels = rng.integers(0, 4, 10)
    expected = modality_scores(logits, labels)
    scores = _ogm.batch_scores([logits[n].astype("float32") for n in names], labels)
    np.testing.assert_allclose(np.asarray(scores), [expected[n] for n in names], rtol=1e-5, atol=1e-6)
    want = OGMGE(names, alpha=0.8).coefficients(logits=logits, labels=labels)
    got = np.asarray(_ogm.coefficients(np.array([expected[n] for n in names], "float32"), 0.8))
    np.testing.assert_allclose(got, [want[n] for n in names], rtol=1e-4, atol=1e-6)


# -- learning policies and saving --------------------------------------------------------------------------


def adaptive() -> AdaptivePDMP:
    return AdaptivePDMP(NAMES, {"audio": 0.71, "image": 0.38}, horizon=3.0)


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_adaptive_coefficients_come_from_the_batches_before_each_step(mode: str) -> None:
    model = compile_(wrap(adaptive(), mode), None if mode == "grad" else keras.optimizers.Adam(0.01))
    record = fit(model, epochs=3)
    replay = adaptive()
    for step, (used, logits, labels) in enumerate(zip(record.seen, record.logits, record.labels, strict=True)):
        want = replay.coefficients()
        for name in NAMES:  # float32 scores in the step vs float64 in the replay
            assert used[name] == pytest.approx(want[name], rel=1e-4), f"step {step} {name}"
        replay.update(modality_scores(logits, labels))
    assert len({tuple(row.values()) for row in record.seen}) > 8, "the coefficients must move during the run"


def test_a_saved_model_resumes_exactly_like_the_uninterrupted_run(tmp_path: object) -> None:
    """``.keras`` keeps weights, optimizer, clock and what AdaptivePDMP has learnt (exactly: packed float64)."""
    import os

    whole = compile_(wrap(adaptive()))
    fit(whole, epochs=3)
    first = compile_(wrap(adaptive()))
    fit(first, epochs=2)
    path = os.path.join(str(tmp_path), "model.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ModulatedModel) and loaded.policy == first.policy
    assert loaded.state_dict() == first.state_dict()  # exact, policy state included
    assert loaded.step_count == 8 and loaded.epoch == 1
    fit(loaded, epochs=3, initial_epoch=2)
    assert loaded.step_count == whole.step_count == 12
    resumed, uninterrupted = loaded.state_dict()["policy_state"], whole.state_dict()["policy_state"]
    assert resumed["updates"] == uninterrupted["updates"] == 11
    assert resumed["ema"] == pytest.approx(uninterrupted["ema"], rel=1e-6)
    for key, value in weights(whole).items():
        np.testing.assert_allclose(weights(loaded)[key], value, **F32, err_msg=key)


def test_keras_distribution_is_refused_with_the_alternative() -> None:
    model = compile_(wrap(PDMP(NAMES, "audio")))
    x, y = data()
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        with pytest.raises(NotImplementedError, match=r"does not support keras\.distribution"):
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    finally:
        keras.distribution.set_distribution(None)


def test_auxiliary_unimodal_losses_train_the_dominant_encoder_on_jax() -> None:
    """float32 JAX: the dominant modality's unimodal loss joins training with the policy's weights (the
    float64 parity with TensorFlow is ``tests/test_parity_jax.py``)."""
    runs = {}
    for auxiliary in (0.0, 4.0):
        policy = AdaptivePDMP(["audio", "image"], {"audio": 0.9, "image": 0.3}, horizon=3.0, auxiliary=auxiliary)
        options = {"unimodal_logits": SPEC} if auxiliary else {}
        model = compile_(wrap(policy, **options))
        used: list[list[float]] = []  # the weights each step used, written before it from what the policy learnt
        callback = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs, m=model, u=used: u.append(list(m.unimodal_loss_weights.values()))
        )
        fit(model, 2, callbacks=[callback])
        runs[auxiliary] = (weights(model), np.array(used))
    with_loss, weights_used = runs[4.0]
    assert (weights_used[:, 0] > 0).any() and (weights_used[:, 1] == 0).all(), weights_used
    assert (runs[0.0][1] == 0).all()
    assert not np.allclose(with_loss["audio_enc/kernel"], runs[0.0][0]["audio_enc/kernel"])


def test_auxiliary_unimodal_losses_without_unimodal_logits_are_refused() -> None:
    policy = AdaptivePDMP(["audio", "image"], {"audio": 0.9, "image": 0.3}, auxiliary=4.0)
    with pytest.raises(ValueError, match=r"adds each modality's unimodal loss.*pass unimodal_logits="):
        wrap(policy)


# -- one step lifecycle: gradient accumulation and skipped steps -------------------------------------------


def _lifecycle_run(policy: object, optimizer: object, x: object, y: object, batch: int) -> ModulatedModel:
    options = {"unimodal_logits": SPEC} if getattr(policy, "uses_unimodal_losses", False) else {}
    model = compile_(wrap(policy, **options), optimizer)
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("family", ["PDMP-step", "AdaptivePDMP"])
def test_accumulating_two_micro_batches_trains_like_one_batch_of_both_on_jax(family: str) -> None:
    """Defect: Keras on JAX with gradient_accumulation_steps raised (the counter is no variable there), and the
    step counter stayed 0 on TensorFlow. Batch 4 accumulated twice is batch 8: same clock, coefficients, weights."""

    def policy() -> object:
        if family == "PDMP-step":
            return PDMP(NAMES, "audio", 4.0, 0.5, unit="step", warmup=2, ramp=2)
        return AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.3}, horizon=3.0, auxiliary=2.0)

    x, y = data()
    accumulated = _lifecycle_run(policy(), keras.optimizers.SGD(2.0**-4, gradient_accumulation_steps=2), x, y, 4)
    whole = _lifecycle_run(policy(), keras.optimizers.SGD(2.0**-4), x, y, 8)
    assert accumulated.state_dict()["clock"] == whole.state_dict()["clock"] == {"step": 8, "epoch": 1}
    assert accumulated.coefficients == pytest.approx(whole.coefficients, rel=1e-5)
    got, want = accumulated.state_dict()["policy_state"], whole.state_dict()["policy_state"]
    assert repr(got.keys()) == repr(want.keys())
    for key, value in weights(whole).items():
        np.testing.assert_allclose(weights(accumulated)[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if family == "AdaptivePDMP":
        assert got["updates"] == want["updates"] == 7  # once per taken step, from the step's summed scores
        assert got["ema"] == pytest.approx(want["ema"], rel=1e-5)


def test_ogmge_counts_taken_steps_under_accumulation_on_jax() -> None:
    x, y = data()
    model = _lifecycle_run(
        OGMGE(NAMES, alpha=0.5), keras.optimizers.SGD(2.0**-4, gradient_accumulation_steps=2), x, y, 4
    )
    assert model.step_count == 8 == int(np.asarray(model.optimizer.iterations))


def test_a_step_the_loss_scale_optimizer_skips_changes_no_policy_state_on_jax() -> None:
    """A skipped step is not counted and its scores do not reach the learning policy: the run equals one that
    never saw the batch."""
    x, y = data()
    poisoned = {key: value.copy() for key, value in x.items()}
    poisoned["a"][BATCH] = np.nan
    keep = np.r_[0:BATCH, 2 * BATCH : len(y)]
    runs = []
    for inputs, labels in ((poisoned, y), ({key: value[keep] for key, value in x.items()}, y[keep])):
        model = compile_(wrap(adaptive()), keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(2.0**-4)))
        model.fit(inputs, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        runs.append(model)
    skipped, never_seen = runs
    assert skipped.step_count == never_seen.step_count == 3
    got, want = skipped.state_dict()["policy_state"], never_seen.state_dict()["policy_state"]
    assert got["updates"] == want["updates"] == 2 and got["ema"] == pytest.approx(want["ema"], rel=1e-6)
    for key, value in weights(never_seen).items():
        np.testing.assert_allclose(weights(skipped)[key], value, **F32, err_msg=key)


# -- GradientPolicies (AGM, MMPareto, InfoReg, ARL) on JAX -------------------------------------------------------
#
# float32 here; the float64 step-by-step parity with TensorFlow (every transform and parameter) is
# tests/test_parity_jax.py.


class _WithUnimodalHeads(keras.Model):
    """The fused model plus a unimodal head on each encoder (MMPareto's unimodal losses), trained with it."""

    def __init__(self, fused: keras.Model) -> None:
        super().__init__(name="with_heads")
        self.fused = fused
        self.features = keras.Model(fused.inputs, {m: fused.get_layer(layer).output for m, layer in ENCODERS.items()})
        self.unimodal_heads = {m: keras.layers.Dense(3, name=f"{m}_unimodal") for m in NAMES}
        for head in self.unimodal_heads.values():
            head.build((None, 8))  # before fit(): JAX's step carries the variables that exist when it starts

    def call(self, inputs: object, training: object = None) -> object:
        return self.fused(inputs, training=training)


def _unimodal_head_logits(model: keras.Model, x: object, training: bool) -> dict[str, object]:
    features = model.features(x, training=training)
    return {m: model.unimodal_heads[m](value) for m, value in features.items()}


def _masked_responses(model: keras.Model, x: object, training: bool) -> dict[str, object]:
    import pdmp

    by_modality = {"audio": x["a"], "image": x["v"]}  # type: ignore[index]
    responses = pdmp.mono_modal_responses(
        lambda inputs: model({"a": inputs["audio"], "v": inputs["image"]}, training=False), by_modality
    )
    return {m: keras.ops.stop_gradient(value) for m, value in responses.items()}


def gradient_policy_model(name: str) -> ModulatedModel:
    """Each GradientPolicy wired as the README's baselines table says."""
    import pdmp

    if name == "MMPareto":
        inner = _WithUnimodalHeads(build())
        x, _ = data(2)
        inner(x)
        encoders = {m: inner.fused.get_layer(layer) for m, layer in ENCODERS.items()}
        return ModulatedModel(inner, encoders, pdmp.MMPareto(NAMES), unimodal_logits=_unimodal_head_logits)
    if name == "AGM":
        return ModulatedModel(build(), ENCODERS, pdmp.AGM(NAMES), modality_logits=_masked_responses)
    policy = pdmp.InfoReg(NAMES, window=1) if name == "InfoReg" else pdmp.ARL(NAMES, gamma=1.0, warmup=1)
    return ModulatedModel(build(), ENCODERS, policy, modality_logits=SPEC, unimodal_logits=SPEC)


@pytest.mark.parametrize("name", ["AGM", "MMPareto", "InfoReg", "ARL"])
def test_gradient_policies_train_on_jax_with_the_cores_transform(name: str) -> None:
    """Were refused on JAX. Now ``fit()`` calls the core's transform once per taken step (the host call is
    ``jax.pure_callback``), the reported coefficients are that transform's, and the policy's state lives in the
    model's variables."""
    model = compile_(gradient_policy_model(name), keras.optimizers.SGD(2.0**-4, momentum=0.9))
    before = weights(model)
    calls: list[int] = []
    transform = model.policy.transform

    def counted(**kwargs: object) -> object:
        calls.append(int(kwargs["step"]))  # type: ignore[call-overload]
        return transform(**kwargs)

    model.policy.transform = counted  # type: ignore[method-assign]
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    assert model.step_count == 12 and calls == list(range(12)), calls
    last = model.policy.last_transform
    assert model.coefficients == pytest.approx({m: last.coefficient(m) for m in NAMES}, rel=1e-6)
    after = weights(model)
    for key, value in after.items():
        assert np.isfinite(value).all(), key
    for layer in ENCODERS.values():
        assert not np.allclose(after[f"{layer}/kernel"], before[f"{layer}/kernel"]), layer
    if name == "AGM":
        state = model.state_dict()["policy_state"]
        model.policy.reset()  # the variable, not the Python object, holds the state
        assert model.state_dict()["policy_state"] == state


def test_anchors_hold_copies_not_the_encoders_own_arrays() -> None:
    """Defect: InfoReg's anchors were taken with ``anchor.assign(variable)``, which on JAX makes both variables
    hold one array; Keras's jitted step donates every variable's buffer and failed: "Attempt to donate the same
    buffer twice". The anchors must be copies, at construction and at every epoch start."""
    import pdmp

    model = compile_(ModulatedModel(build(), ENCODERS, pdmp.InfoReg(NAMES), modality_logits=SPEC, unimodal_logits=SPEC))
    for epoch in (None, 1):
        if epoch is not None:
            model.set_epoch(epoch)
        for name, anchors in model._anchors.value.items():
            for anchor, variable in zip(anchors, model.modality_variables[name], strict=True):
                assert anchor.value is not variable.value, f"{anchor.path} shares {variable.path}'s array"
                assert anchor.value.unsafe_buffer_pointer() != variable.value.unsafe_buffer_pointer()
                np.testing.assert_array_equal(np.asarray(anchor.value), np.asarray(variable.value))
    fit(model, epochs=2)  # raised before
    assert model.step_count == 8


def test_a_saved_inforeg_model_resumes_like_the_uninterrupted_run_on_jax(tmp_path: object) -> None:
    """The policy's state and its epoch-start anchors are variables, so a ``.keras`` file resumes the run."""
    import os

    import pdmp

    def make() -> ModulatedModel:
        policy = pdmp.InfoReg(NAMES, window=2)
        return compile_(ModulatedModel(build(), ENCODERS, policy, modality_logits=SPEC, unimodal_logits=SPEC))

    whole = make()
    fit(whole, epochs=3)
    first = make()
    fit(first, epochs=2)
    path = os.path.join(str(tmp_path), "model.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ModulatedModel) and loaded.state_dict() == first.state_dict()
    fit(loaded, epochs=3, initial_epoch=2)
    resumed, uninterrupted = loaded.state_dict()["policy_state"], whole.state_dict()["policy_state"]
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    assert resumed["history"] == pytest.approx(uninterrupted["history"], rel=1e-5)
    assert resumed["history"][-1] > 0  # InfoReg measured its trace in the resumed epoch
    for key, value in weights(whole).items():
        np.testing.assert_allclose(weights(loaded)[key], value, **F32, err_msg=key)


@pytest.mark.parametrize("name", ["AGM", "MMPareto", "InfoReg", "ARL"])
def test_a_gradient_policy_accumulating_two_micro_batches_trains_like_one_batch_of_both_on_jax(name: str) -> None:
    """Was refused on JAX: the step's running sums of the logit statistics (and MMPareto's U) lived in free
    variables, constants of a stateless JAX step. They are model weights there now: batch 4 accumulated twice
    transforms and trains like batch 8, once per taken step."""
    x, y = data()
    runs = []
    for optimizer, batch in ((keras.optimizers.SGD(2.0**-4, gradient_accumulation_steps=2), 4),
                             (keras.optimizers.SGD(2.0**-4), 8)):  # fmt: skip
        model = compile_(gradient_policy_model(name), optimizer)
        model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
        runs.append(model)
    accumulated, whole = runs
    assert accumulated.step_count == whole.step_count == 8
    assert accumulated.coefficients == pytest.approx(whole.coefficients, rel=1e-5)
    for key, value in weights(whole).items():
        np.testing.assert_allclose(weights(accumulated)[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


# -- RebalancingPolicies on JAX ------------------------------------------------------------------------------------
#
# float32 here; every parameter after every step against the TensorFlow run (float64) is tests/test_parity_jax.py.


@pytest.mark.parametrize("name", ["PMR", "DiagnosingRelearning"])
def test_rebalancing_policies_train_on_jax_and_do_their_epoch_boundary_work(name: str) -> None:
    import pdmp

    policy = pdmp.PMR(NAMES, alpha=2.0) if name == "PMR" else pdmp.DiagnosingRelearning(NAMES, every=1, count=1)
    model = compile_(ModulatedModel(build(), ENCODERS, policy, modality_features=ENCODERS))
    plain = compile_(ModulatedModel(build(), ENCODERS, pdmp.DiagnosingRelearning(NAMES, count=0),
                                    modality_features=ENCODERS))  # fmt: skip
    x, y = data()
    held = data(16, seed=3)
    for each in (model, plain):
        each.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, held_out=held)
    assert model.step_count == 8
    if name == "PMR":
        for i, m in enumerate(NAMES):
            np.testing.assert_allclose(np.asarray(model.pdmp_prototypes[i].value), model.policy.prototypes()[m],
                                       rtol=1e-6)  # fmt: skip
    else:
        assert model.policy.state_dict() == {"done": 1}
    assert any(not np.allclose(weights(model)[k], weights(plain)[k]) for k in weights(plain))
