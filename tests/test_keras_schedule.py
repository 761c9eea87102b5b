"""ModulatedModel's schedule under restore/resume, custom loops, skipped steps and fit() options.

Each test here pins a defect that once existed: coefficients that went stale after weights were
restored, custom loops that never advanced the schedule, skipped loss-scaled steps that were counted,
``steps_per_execution`` that delayed step schedules, unfrozen encoders that were never modulated, and
an lr mode that could silently stop scaling.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from keras_helpers import keras, tf
from test_keras_model import NAMES, build, compile_, data, gradients, modality_of, weights, wrap

from pdmp import OGMGE, PDMP, NoModulation
from pdmp.backends.keras import ConcatHead

pytestmark = pytest.mark.keras

UP, STEADY = {"audio": 1.0, "visual": 1.0}, {"audio": 10.0, "visual": 0.5}


class Recorder(keras.callbacks.Callback):
    """The coefficients in force at every batch (read after the schedule callback wrote them)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, float]] = []

    def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
        self.seen.append(self.model.coefficients)


class Preempt(keras.callbacks.Callback):
    """Simulates a preemption: the job dies when ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt("preempted")


def assert_same_weights(got: keras.Model, want: keras.Model) -> None:
    for path, value in weights(want).items():
        np.testing.assert_array_equal(weights(got)[path], value, err_msg=path)


# -- defect 1: restored weights restore the schedule ------------------------------------------------------


def test_load_weights_then_resume_trains_with_the_uninterrupted_runs_coefficients(tmp_path: object) -> None:
    """The issue's repro: fit with warmup=1, load the epoch-0 checkpoint, fit(initial_epoch=1)."""
    x, y = data()
    policy = PDMP(NAMES, "audio", gamma_p=10.0, gamma_r=0.5, warmup=1)
    straight, straight_seen = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9)), Recorder()
    straight.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[straight_seen])

    model = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    checkpoint = os.path.join(str(tmp_path), "epoch0.weights.h5")
    model.save_weights(checkpoint)
    model.fit(x, y, batch_size=4, epochs=3, initial_epoch=1, shuffle=False, verbose=0)  # coefficients now 10/0.5
    model.load_weights(checkpoint)
    assert model.coefficients == UP and model.step_count == 4  # the checkpoint's own values
    seen = Recorder()
    model.fit(x, y, batch_size=4, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[seen])
    assert straight_seen.seen == [UP] * 4 + [STEADY] * 8
    assert seen.seen == [STEADY] * 8
    assert model.state_dict()["clock"] == straight.state_dict()["clock"] == {"step": 12, "epoch": 2}
    assert_same_weights(model, straight)


def test_set_weights_restores_the_step_clock_of_a_step_schedule() -> None:
    x, y = data()
    policy = PDMP(NAMES, "visual", gamma_p=6.0, gamma_r=0.25, unit="step", warmup=2, ramp=4)
    straight, straight_seen = compile_(wrap(policy), keras.optimizers.SGD(0.05)), Recorder()
    straight.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[straight_seen])
    model = compile_(wrap(policy), keras.optimizers.SGD(0.05))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    snapshot = model.get_weights()
    model.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    model.set_weights(snapshot)  # back to the end of epoch 0: step 4
    seen = Recorder()
    model.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, shuffle=False, verbose=0, callbacks=[seen])
    assert seen.seen == straight_seen.seen[4:]
    assert_same_weights(model, straight)


def test_backup_and_restore_after_a_preemption_resumes_the_step_ramp_exactly(tmp_path: object) -> None:
    """BackupAndRestore restores the weights (and the clock) in on_train_begin, after the schedule's own."""
    x, y = data()
    policy = PDMP(NAMES, "visual", gamma_p=6.0, gamma_r=0.25, unit="step", warmup=3, ramp=6)
    backup = os.path.join(str(tmp_path), "backup")
    straight, straight_seen = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9)), Recorder()
    straight.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[straight_seen])

    first = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9))
    with pytest.raises(KeyboardInterrupt):
        callbacks = [keras.callbacks.BackupAndRestore(backup), Preempt(epoch=2)]
        first.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    # A new process: a freshly built model, the same fit() call.
    second, seen = compile_(wrap(policy, build(seed=5)), keras.optimizers.SGD(0.05, momentum=0.9)), Recorder()
    second.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup), seen],
    )
    assert seen.seen == straight_seen.seen[8:]  # epoch 2 only, at steps 8..11 of the ramp
    assert seen.seen[0] == {"audio": pytest.approx(1 - 0.75 * 6 / 6), "visual": pytest.approx(6.0)}
    assert second.state_dict()["clock"] == {"step": 12, "epoch": 2}
    assert_same_weights(second, straight)


def test_early_stopping_restore_best_weights_restores_the_clock_with_them() -> None:
    x, y = data()
    policy = PDMP(NAMES, "audio", gamma_p=10.0, gamma_r=0.5, unit="step", warmup=6)
    model = compile_(wrap(policy), keras.optimizers.SGD(0.05))
    # The monitored value is best at epoch 0 (it rises afterwards), so epoch 0's weights come back.
    stop = keras.callbacks.EarlyStopping(monitor="epoch_index", patience=1, restore_best_weights=True, mode="min")
    index = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.__setitem__("epoch_index", epoch))
    model.fit(x, y, batch_size=4, epochs=5, shuffle=False, verbose=0, callbacks=[index, stop])
    assert model.step_count == 4 and model.epoch == 0 and model.coefficients == UP
    seen = Recorder()
    model.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, shuffle=False, verbose=0, callbacks=[seen])
    assert seen.seen == [UP, UP, STEADY, STEADY]  # steps 4..7: warm-up ends at step 6, not earlier


# -- defect 3: train_on_batch and loops of your own ----------------------------------------------------------


def batches(x: dict[str, np.ndarray], y: np.ndarray, size: int = 4) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [({k: v[i : i + size] for k, v in x.items()}, y[i : i + size]) for i in range(0, len(y), size)]


def test_train_on_batch_advances_the_step_schedule_like_fit() -> None:
    x, y = data()
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, unit="step", warmup=2)
    by_fit = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9))
    by_fit.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    model = compile_(wrap(policy), keras.optimizers.SGD(0.05, momentum=0.9))
    model.set_epoch(0)
    used = []
    for xb, yb in batches(x, y):
        model.train_on_batch(xb, yb)
        used.append(model.coefficients)  # written before the step, so the step's own
    assert used == [UP, UP, {"audio": 4.0, "visual": 0.5}, {"audio": 4.0, "visual": 0.5}]
    assert model.step_count == 4
    assert_same_weights(model, by_fit)


def test_custom_loop_with_step_follows_the_schedule_and_equals_fit() -> None:
    x, y = data()
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, unit="step", warmup=1, ramp=2)
    by_fit = compile_(wrap(policy), keras.optimizers.SGD(0.05))
    by_fit.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    model = compile_(wrap(policy), keras.optimizers.SGD(0.05))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train(xb: object, yb: object) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        variables = model.trainable_weights
        grads = model.modulate_gradients(tape.gradient(loss, variables), variables)
        model.optimizer.apply_gradients(zip(grads, variables, strict=True))

    used = []
    for epoch in range(2):
        model.set_epoch(epoch)
        for xb, yb in batches(x, y):
            used.append(model.coefficients)
            train(xb, yb)
            assert model.step() is True
    assert used[:4] == [
        UP,
        {"audio": 2.5, "visual": 0.75},
        {"audio": 4.0, "visual": 0.5},
        {"audio": 4.0, "visual": 0.5},
    ]
    assert model.step_count == 8
    for path, value in weights(by_fit).items():
        np.testing.assert_allclose(weights(model)[path], value, rtol=1e-6, atol=1e-7, err_msg=path)

    @tf.function
    def traced_step() -> None:
        model.step()

    with pytest.raises(RuntimeError, match=r"step\(\) computes the next coefficients in Python"):
        traced_step()
    with pytest.raises(RuntimeError, match=r"took no step since the last step\(\)"):
        model.step()  # no optimizer step happened since the last one
    assert model.step_count == 8


def test_ogm_noise_differs_from_step_to_step_in_a_custom_loop() -> None:
    x, y = data()
    spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
    model = wrap(OGMGE(NAMES, alpha=0.5), modality_logits=spec, seed=3)
    compile_(model, keras.optimizers.SGD(0.0))  # lr 0: the gradients stay the same from step to step
    model.set_epoch(0)
    variables = model.trainable_weights
    raw = [tf.convert_to_tensor(g) for g in gradients(model.inner_model, x, y).values()]
    ones = tf.ones(2)
    drawn = []
    for _ in range(3):
        drawn.append([g.numpy() for g in model.modulate_gradients(raw, variables, coefficients=ones)])
        model.optimizer.apply_gradients(zip(raw, variables, strict=True))
        model.step()
    encoder = [i for i, v in enumerate(variables) if modality_of(v.path)]
    for i in encoder:
        assert not np.array_equal(drawn[0][i], drawn[1][i]) and not np.array_equal(drawn[1][i], drawn[2][i])


# -- defect 4: steps a LossScaleOptimizer skipped are not counted -------------------------------------------


def test_steps_skipped_by_the_loss_scale_optimizer_are_not_counted() -> None:
    x, y = data()
    x["a"][4] = np.nan  # batch 1 (samples 4..7) has non-finite gradients: the optimizer skips it
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, unit="step", warmup=2)
    model = compile_(wrap(policy), keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05)))
    seen = Recorder()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[seen])
    # Steps 0, (1 skipped), 1, 2: warm-up (steps 0-1) covers the third batch too.
    assert seen.seen == [UP, UP, UP, {"audio": 4.0, "visual": 0.5}]
    assert model.step_count == 3 == int(model.optimizer.inner_optimizer.iterations.numpy())
    assert all(np.isfinite(value).all() for value in weights(model).values())


def test_custom_loop_step_does_not_count_a_skipped_loss_scaled_step() -> None:
    x, y = data()
    model = compile_(
        wrap(PDMP(NAMES, "audio", unit="step", warmup=1)),
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
    )
    model.set_epoch(0)
    variables = model.trainable_weights
    grads = [tf.convert_to_tensor(g) for g in gradients(model.inner_model, x, y).values()]
    model.optimizer.apply_gradients(zip([g * np.inf for g in grads], variables, strict=True))
    assert model.step() is False and model.step_count == 0 and model.coefficients == UP
    model.optimizer.apply_gradients(zip(grads, variables, strict=True))
    assert model.step() is True and model.step_count == 1 and model.coefficients == STEADY


# -- steps_per_execution ----------------------------------------------------------------------------------


def test_steps_per_execution_is_refused_for_step_schedules_and_exact_for_epoch_ones() -> None:
    step_policy = PDMP(NAMES, "audio", unit="step", warmup=3)
    model = wrap(step_policy)
    with pytest.raises(ValueError, match=r"steps_per_execution=4 runs 4 steps per call.*steps_per_execution=1"):
        compile_(model, keras.optimizers.SGD(0.05), steps_per_execution=4)
    assert getattr(model, "optimizer", None) is None  # refused before compiling
    x, y = data()
    epoch_policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, warmup=1)
    runs = []
    for steps in (1, 4):
        model = compile_(wrap(epoch_policy), keras.optimizers.SGD(0.05), steps_per_execution=steps)
        model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
        assert model.step_count == 16 and model.coefficients == {"audio": 4.0, "visual": 0.5}
        runs.append(model)
    for path, value in weights(runs[0]).items():
        np.testing.assert_allclose(weights(runs[1])[path], value, rtol=1e-6, atol=1e-7, err_msg=path)


# -- frozen, then unfrozen ------------------------------------------------------------------------------------


def test_an_encoder_frozen_at_construction_is_modulated_once_unfrozen() -> None:
    x, y = data()
    inner = build()
    inner.get_layer("visual_enc").trainable = False
    model = compile_(wrap(PDMP(NAMES, "audio", gamma_p=3.0, gamma_r=0.5), inner), keras.optimizers.SGD(0.1))
    assert [v.path for v in model.modality_variables["visual"]] == ["visual_enc/kernel", "visual_enc/bias"]
    start = weights(model)
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    assert "visual_enc/kernel" not in start  # frozen: not trained
    inner.get_layer("visual_enc").trainable = True
    compile_(model, keras.optimizers.SGD(0.1))  # Keras needs a recompile after trainable changes
    before, grads = weights(model), gradients(inner, x, y)
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    k = {"audio": 3.0, "visual": 0.5, None: 1.0}
    for path, value in weights(model).items():
        expected = before[path] - 0.1 * k[modality_of(path)] * grads[path]
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=path)


# -- lr mode's guard and grad mode's warning -------------------------------------------------------------------


def test_lr_mode_raises_if_keras_stops_calling_update_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a Keras release whose optimizer updates variables without the per-variable update_step."""
    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    def bypass(self: object, distribution: object, grads_and_vars: object, learning_rate: object) -> None:
        for grad, var in grads_and_vars:  # type: ignore[attr-defined]
            type(self).update_step(self, grad, var, learning_rate)

    monkeypatch.setattr(TFOptimizer, "_distributed_tf_update_step", bypass)
    x, y = data()
    model = compile_(wrap(PDMP(NAMES, "audio"), mode="lr"), keras.optimizers.Adam(1e-2))
    with pytest.raises(RuntimeError, match=r"without calling its per-variable update_step"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    plain = compile_(wrap(PDMP(NAMES, "audio")), keras.optimizers.SGD(1e-2))
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0)  # grad mode does not depend on that path


def test_grad_mode_with_an_adaptive_optimizer_warns_once_at_compile() -> None:
    model = wrap(PDMP(NAMES, "audio"))
    with pytest.warns(UserWarning, match=r"mode='grad' with AdamW.*mode='lr'"):
        compile_(model, keras.optimizers.AdamW(1e-3))
    for quiet, optimizer in [
        (wrap(PDMP(NAMES, "audio")), keras.optimizers.SGD(1e-3, momentum=0.9)),
        (wrap(PDMP(NAMES, "audio"), mode="lr"), keras.optimizers.Adam(1e-3)),
        (wrap(NoModulation(NAMES)), keras.optimizers.Adam(1e-3)),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            compile_(quiet, optimizer)
    with pytest.warns(UserWarning, match=r"mode='grad' with RMSprop"):
        compile_(wrap(PDMP(NAMES, "audio")), "rmsprop")
