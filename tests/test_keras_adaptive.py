"""AdaptivePDMP through Keras's ModulatedModel: lagged coefficients, exact resume, custom loops, misuse.

A learning policy (``observes_scores``) gets each step's batch scores from the graph and folds them in
before the next step; these tests replay the same logits through the NumPy core independently and
check every step's coefficients, and check that every way Keras resumes a run (a ``.keras`` file,
``load_weights``, ``BackupAndRestore``, ``state_dict``) continues with the uninterrupted run's
coefficients and weights.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from keras_helpers import keras, tf
from test_keras_schedule import Preempt

from pdmp import PDMP, AdaptivePDMP
from pdmp.backends.keras import ConcatHead, ModulatedModel, concat_head_logits
from pdmp.diagnostics import modality_scores

pytestmark = pytest.mark.keras

NAMES = ("audio", "image")
ACCURACIES = {"audio": 0.71, "image": 0.38}  # audio dominant; the easy image branch will take more than its share
SPEC = ConcatHead("head", {"audio": "audio_enc", "image": "image_enc"})
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
F64 = "float64"
N, BATCH = 32, 8  # 4 steps per epoch


def policy() -> AdaptivePDMP:
    return AdaptivePDMP(NAMES, ACCURACIES, horizon=3.0)


def build(seed: int = 0) -> keras.Model:
    """Float64 throughout, so the in-graph scores equal the core's to rounding."""
    keras.utils.set_random_seed(seed)
    a, v = keras.Input((6,), name="a", dtype=F64), keras.Input((5,), name="v", dtype=F64)
    fa = keras.layers.Dense(8, activation="relu", name="audio_enc", dtype=F64)(a)
    fv = keras.layers.Dense(8, activation="relu", name="image_enc", dtype=F64)(v)
    fused = keras.layers.Concatenate(name="concat", dtype=F64)([fa, fv])
    return keras.Model({"a": a, "v": v}, keras.layers.Dense(3, name="head", dtype=F64)(fused), name="fused")


def data(n: int = N, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    image = rng.normal(size=(n, 5)) + 3.0 * np.eye(3, 5)[y]  # easy: the image branch memorises it
    x = {"a": rng.normal(size=(n, 6)), "v": image}
    return {k: v.astype(np.float32).astype(np.float64) for k, v in x.items()}, y  # float32-exact inputs


def wrap(model: keras.Model | None = None, mode: str = "grad", **options: object) -> ModulatedModel:
    options.setdefault("modality_logits", SPEC)
    return ModulatedModel(
        model or build(), {"audio": "audio_enc", "image": "image_enc"}, policy(), mode=mode, **options
    )


def compile_(model: keras.Model, mode: str = "grad") -> keras.Model:
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9) if mode == "grad" else keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss=LOSS, jit_compile=False)
    return model


class Recorder(keras.callbacks.Callback):
    """Per step: the coefficients in force and the per-modality logits of the batch, before its update."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.seen: list[dict[str, float]] = []
        self.logits: list[dict[str, np.ndarray]] = []
        self.labels: list[np.ndarray] = []
        self.batch_in_epoch = 0

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.batch_in_epoch = 0

    def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
        self.seen.append(self.model.coefficients)
        rows = slice(batch * BATCH, (batch + 1) * BATCH)
        inner = self.model.inner_model
        features = {
            "audio": inner.get_layer("audio_enc")(self.x["a"][rows]),
            "image": inner.get_layer("image_enc")(self.x["v"][rows]),
        }
        logits = concat_head_logits(inner.get_layer("head"), features)
        self.logits.append({name: np.asarray(value) for name, value in logits.items()})
        self.labels.append(self.y[rows])


def fit(model: ModulatedModel, x: dict, y: np.ndarray, *, epochs: int, **options: object) -> Recorder:
    recorder = Recorder(x, y)
    callbacks = [*options.pop("callbacks", []), recorder]  # type: ignore[misc]
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **options)
    return recorder


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.trainable_weights}


def assert_same_run(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    assert len(got) == len(want)
    for step, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        assert mine == theirs, f"step {step}: {mine} vs {theirs}"


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_each_steps_coefficients_come_from_the_batches_before_it(mode: str) -> None:
    x, y = data()
    model = compile_(wrap(mode=mode), mode)
    record = fit(model, x, y, epochs=3)
    # Independent replay in the core, from logits computed outside the graph.
    replay = policy()
    for used, logits, labels in zip(record.seen, record.logits, record.labels, strict=True):
        expected = replay.coefficients()
        assert used == pytest.approx(expected, rel=1e-12), (used, expected)
        replay.update(modality_scores(logits, labels))
    assert record.seen[0] == {"audio": 1.0, "image": 1.0}
    assert record.seen[-1]["image"] < 0.5  # the memorising branch is slowed
    state = model.state_dict()
    assert state["clock"] == {"step": 12, "epoch": 2}
    assert state["pending_scores"] is not None  # the last step's scores: folded in before the next step
    # The policy object catches up on the next step; by then it has seen all 12 batches.
    model.update_coefficients()
    assert model.policy.updates == replay.updates == 12
    assert model.coefficients == pytest.approx(replay.coefficients(), rel=1e-12)


def test_grad_mode_scales_each_encoders_gradient_by_its_adaptive_coefficient() -> None:
    x, y = data()
    model = compile_(wrap())
    fit(model, x, y, epochs=1)
    model.update_coefficients()  # the next step's coefficients
    factors = model.coefficients
    assert factors["image"] < 1.0
    rows = {k: v[:BATCH] for k, v in x.items()}
    with tf.GradientTape() as tape:
        loss = LOSS(y[:BATCH], model(rows, training=True))
    variables = model.trainable_weights
    raw = tape.gradient(loss, variables)
    scaled = model.modulate_gradients(raw, variables)
    for variable, before, after in zip(variables, raw, scaled, strict=True):
        layer = variable.path.split("/")[0]
        k = {"audio_enc": factors["audio"], "image_enc": factors["image"]}.get(layer, 1.0)
        np.testing.assert_allclose(np.asarray(after), k * np.asarray(before), rtol=1e-14, err_msg=variable.path)


def test_keras_file_resume_equals_the_uninterrupted_run(tmp_path: object) -> None:
    x, y = data()
    straight = compile_(wrap())
    want = fit(straight, x, y, epochs=4).seen
    first = compile_(wrap())
    got = fit(first, x, y, epochs=2).seen
    path = os.path.join(str(tmp_path), "adaptive.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.policy, AdaptivePDMP) and loaded.policy.updates == 0  # fresh until synced
    assert loaded.state_dict()["policy_state"] == first.state_dict()["policy_state"]
    got += fit(loaded, x, y, epochs=4, initial_epoch=2).seen
    assert_same_run(got, want)
    for path_, value in weights(straight).items():
        np.testing.assert_array_equal(weights(loaded)[path_], value, err_msg=path_)


def test_load_weights_restores_what_the_policy_learnt_with_the_clock(tmp_path: object) -> None:
    x, y = data()
    straight = compile_(wrap())
    want = fit(straight, x, y, epochs=3).seen
    model = compile_(wrap())
    fit(model, x, y, epochs=1)
    checkpoint = os.path.join(str(tmp_path), "epoch0.weights.h5")
    model.save_weights(checkpoint)
    fit(model, x, y, epochs=3, initial_epoch=1)  # learns on, past the checkpoint
    model.load_weights(checkpoint)
    assert model.state_dict()["clock"] == {"step": 4, "epoch": 0}
    got = fit(model, x, y, epochs=3, initial_epoch=1).seen
    assert_same_run(got, want[4:])
    # EarlyStopping(restore_best_weights=True) and set_weights restore the same variables.
    snapshot = model.get_weights()
    fit(model, x, y, epochs=4, initial_epoch=3)
    model.set_weights(snapshot)
    assert model.state_dict() == straight.state_dict()


def test_backup_and_restore_after_a_preemption_resumes_exactly(tmp_path: object) -> None:
    x, y = data()
    backup = os.path.join(str(tmp_path), "backup")
    straight = compile_(wrap())
    want = fit(straight, x, y, epochs=3).seen
    first = compile_(wrap())
    with pytest.raises(KeyboardInterrupt):
        fit(first, x, y, epochs=3, callbacks=[keras.callbacks.BackupAndRestore(backup), Preempt(epoch=2)])
    second = compile_(wrap(build(seed=5)))  # a new process: other initial weights, a fresh policy
    got = fit(second, x, y, epochs=3, callbacks=[keras.callbacks.BackupAndRestore(backup)]).seen
    assert_same_run(got, want[8:])
    for path, value in weights(straight).items():
        np.testing.assert_array_equal(weights(second)[path], value, err_msg=path)


def test_state_dict_round_trip_continues_the_run() -> None:
    x, y = data()
    straight = compile_(wrap())
    want = fit(straight, x, y, epochs=2).seen
    first = compile_(wrap())
    fit(first, x, y, epochs=1)
    state = first.state_dict()
    second = compile_(wrap(first.inner_model))  # same weights; the policy state comes from state
    second.optimizer.build(second.trainable_variables)
    for mine, theirs in zip(second.optimizer.variables, first.optimizer.variables, strict=True):
        mine.assign(theirs)
    second.load_state_dict(state)
    got = fit(second, x, y, epochs=2, initial_epoch=1).seen
    assert_same_run(got, want[4:])


def test_a_bad_policy_state_is_refused_before_anything_changes() -> None:
    x, y = data()
    model = compile_(wrap())
    fit(model, x, y, epochs=1)
    before = model.state_dict()
    for bad, match in (
        ({**before, "policy_state": {"ema": {"audio": -1.0, "image": 0.0}, "updates": 3}}, "invalid values"),
        ({**before, "policy_state": {"ema": {"audio": 1.0}, "updates": 3}}, "policy_state"),
        ({**before, "pending_scores": {"audio": float("nan"), "image": 1.0}}, "finite number >= 0"),
        ({**before, "pending_scores": [1.0, 2.0]}, "pending_scores"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            model.load_state_dict(bad)
        assert model.state_dict() == before


def test_train_on_batch_and_a_custom_loop_follow_fit() -> None:
    x, y = data()
    want = fit(compile_(wrap()), x, y, epochs=2).seen
    batches = [({k: v[i : i + BATCH] for k, v in x.items()}, y[i : i + BATCH]) for i in range(0, N, BATCH)]

    by_batch = compile_(wrap())
    used = []
    for epoch in range(2):
        by_batch.set_epoch(epoch)
        for xb, yb in batches:
            by_batch.train_on_batch(xb, yb)
            used.append(by_batch.coefficients)  # written before the step: the step's own
    assert_same_run(used, want)

    model = compile_(wrap())
    inner = model.inner_model
    tap = keras.Model(inner.inputs, (inner.output, [inner.get_layer(n).output for n in ("audio_enc", "image_enc")]))

    @tf.function
    def train_step(xb: dict, yb: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            out, (fa, fv) = tap(xb, training=True)
            loss = LOSS(yb, out)
        model.observe(concat_head_logits(inner.get_layer("head"), {"audio": fa, "image": fv}), yb)
        variables = model.trainable_weights
        gradients = model.modulate_gradients(tape.gradient(loss, variables), variables)
        model.optimizer.apply_gradients(zip(gradients, variables, strict=True))

    used = []
    for epoch in range(2):
        model.set_epoch(epoch)
        for xb, yb in batches:
            used.append(model.coefficients)
            train_step(xb, tf.constant(yb))
            assert model.step() is True
    assert_same_run(used, want)
    for path, value in weights(by_batch).items():
        np.testing.assert_allclose(weights(model)[path], value, rtol=1e-12, atol=1e-14, err_msg=path)


def test_misuse_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"AdaptivePDMP learns from per-modality logits: pass modality_logits="):
        wrap(modality_logits=None)
    model = wrap()
    with pytest.raises(ValueError, match=r"steps_per_execution=2 .* AdaptivePDMP learns from every step"):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, steps_per_execution=2)
    model = compile_(wrap())
    model.set_epoch(0)
    xb, yb = data(BATCH)
    with tf.GradientTape() as tape:
        loss = LOSS(yb, model(xb, training=True))
    variables = model.trainable_weights
    model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    with pytest.raises(RuntimeError, match=r"call model\.observe\(modality_logits, labels\)"):
        model.step()
    assert model.step_count == 0


def auxiliary_policy() -> AdaptivePDMP:
    return AdaptivePDMP(NAMES, ACCURACIES, horizon=3.0, auxiliary=4.0)


def test_auxiliary_losses_follow_the_core_and_resume_from_a_keras_file(tmp_path: object) -> None:
    """Each step adds ``w_m * CE(decomposed logits of m)`` with the weights the core gives from the batches
    before it; a ``.keras`` file continues with the uninterrupted run's weights and parameters."""
    x, y = data()

    def model_() -> ModulatedModel:
        wrapped = ModulatedModel(
            build(), {"audio": "audio_enc", "image": "image_enc"}, auxiliary_policy(),
            modality_logits=SPEC, unimodal_logits=SPEC,
        )  # fmt: skip
        return compile_(wrapped)

    class Weights(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[dict[str, float]] = []

        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            self.seen.append(self.model.unimodal_loss_weights)

    straight, used = model_(), Weights()
    record = fit(straight, x, y, epochs=4, callbacks=[used])
    replay = auxiliary_policy()
    for weights_used, logits, labels in zip(used.seen, record.logits, record.labels, strict=True):
        assert weights_used == pytest.approx(replay.unimodal_loss_weights(), rel=1e-12)
        replay.update(modality_scores(logits, labels))
    assert max(w["audio"] for w in used.seen) > 1.0 and all(w["image"] == 0.0 for w in used.seen)

    first, resumed = model_(), Weights()
    fit(first, x, y, epochs=2, callbacks=[resumed])
    path = os.path.join(str(tmp_path), "auxiliary.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.policy.get_config() == auxiliary_policy().get_config()
    fit(loaded, x, y, epochs=4, initial_epoch=2, callbacks=[resumed])
    np.testing.assert_allclose(
        [[w[n] for n in NAMES] for w in resumed.seen], [[w[n] for n in NAMES] for w in used.seen], rtol=1e-12
    )
    for path_, value in weights(straight).items():
        np.testing.assert_allclose(weights(loaded)[path_], value, rtol=1e-12, err_msg=path_)


def test_auxiliary_and_unimodal_logits_misuse_is_refused_with_the_fix() -> None:
    encoders = {"audio": "audio_enc", "image": "image_enc"}
    with pytest.raises(ValueError, match=r"adds each modality's unimodal loss .* pass unimodal_logits="):
        ModulatedModel(build(), encoders, auxiliary_policy(), modality_logits=SPEC)
    with pytest.raises(ValueError, match=r"unimodal_logits= adds unimodal losses, which PDMP does not use"):
        ModulatedModel(build(), encoders, PDMP(NAMES, "audio"), unimodal_logits=SPEC)
    with pytest.raises(ValueError, match=r"unimodal_logits= adds unimodal losses, which AdaptivePDMP does not use"):
        ModulatedModel(build(), encoders, policy(), modality_logits=SPEC, unimodal_logits=SPEC)
