"""One step lifecycle in ``ModulatedModel`` (Keras on TensorFlow): micro-batches accumulate into a step, a step
is taken or skipped, and every policy observes, transforms and counts once per taken step.

* ``gradient_accumulation_steps=2`` at batch 4 trains exactly like batch 8 without accumulation (Keras applies the
  mean of the micro-batches' gradients, the mean of batch 8): every policy whose step is a function of the step's
  samples (PDMP's step schedule, AdaptivePDMP's scores, each GradientPolicy's statistics and transform) must give
  the same weights, clock and policy state.
* A step a ``LossScaleOptimizer`` skips (non-finite gradients) leaves the clock and every policy's state as they
  were and raises nothing: the run equals one that never saw that batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from keras_helpers import keras, single_threaded, tf

single_threaded()

from parity_models import TWO, encoder_layers, initial_weights, keras_model, make_data, names_of  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.keras import ConcatHead, ModulatedModel, SumHeads  # noqa: E402
from pdmp.policies import CoefficientPolicy, Modulation, register_policy  # noqa: E402
from pdmp.transforms import GradientPolicy, GradientTransform  # noqa: E402

pytestmark = pytest.mark.keras

NAMES = names_of(TWO)
DECOMPOSED = ConcatHead("head", {name: f"{name}_fc2" for name in NAMES})
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
N = 32


def _unimodal_heads_model() -> Any:
    from parity_models import _with_unimodal_heads, unimodal_head_weights

    weights = {**initial_weights(TWO), **unimodal_head_weights(TWO)}
    return _with_unimodal_heads(keras_model(TWO, weights), TWO, weights)


def _unimodal_head_logits(model: Any, x: Any, training: bool) -> Any:
    from parity_models import _unimodal_head_logits as logits

    return logits(model, x, training)


#: Every policy family, with the wiring it needs (name -> (policy factory, ModulatedModel options, own model?)).
FAMILIES: dict[str, tuple[Any, dict[str, Any], bool]] = {
    "PDMP-step": (
        lambda: pdmp.PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, unit="step", warmup=2, ramp=2),
        {},
        False,
    ),
    "AdaptivePDMP": (
        lambda: pdmp.AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.4}, horizon=3.0, auxiliary=2.0),
        {"modality_logits": DECOMPOSED, "unimodal_logits": DECOMPOSED},
        False,
    ),
    "AGM": (lambda: pdmp.AGM(NAMES), {"modality_logits": DECOMPOSED}, False),
    "InfoReg": (
        lambda: pdmp.InfoReg(NAMES, window=1),
        {"modality_logits": DECOMPOSED, "unimodal_logits": DECOMPOSED},
        False,
    ),
    "ARL": (lambda: pdmp.ARL(NAMES, warmup=1), {"modality_logits": DECOMPOSED, "unimodal_logits": DECOMPOSED}, False),
    "MMPareto": (lambda: pdmp.MMPareto(NAMES), {"unimodal_logits": _unimodal_head_logits}, True),
}


def wrap(family: str) -> ModulatedModel:
    factory, options, own_heads = FAMILIES[family]
    inner = _unimodal_heads_model() if own_heads else keras_model(TWO, initial_weights(TWO))
    return ModulatedModel(inner, encoder_layers(TWO), factory(), **options)


def trained(model: ModulatedModel, optimizer: Any, x: Any, y: Any, batch: int, epochs: int = 2) -> ModulatedModel:
    model.compile(optimizer=optimizer, loss=LOSS)
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return model


def outcome(model: ModulatedModel) -> dict[str, Any]:
    state = model.state_dict()
    return {
        "clock": state["clock"],
        "policy_state": state["policy_state"],
        "weights": {v.path: np.asarray(v.numpy()) for v in model.inner_model.trainable_weights},
    }


def assert_same_outcome(got: dict[str, Any], want: dict[str, Any], rtol: float = 1e-9) -> None:
    assert got["clock"] == want["clock"]
    assert _flat(got["policy_state"]) == pytest.approx(_flat(want["policy_state"]), rel=rtol, abs=1e-12)
    for path, value in want["weights"].items():
        np.testing.assert_allclose(got["weights"][path], value, rtol=rtol, atol=1e-12, err_msg=path)


def _flat(node: Any) -> list[float]:
    if isinstance(node, dict):
        return [v for key in node for v in _flat(node[key])]
    if isinstance(node, (list, tuple)):
        return [v for item in node for v in _flat(item)]
    return [float(node)]


# -- gradient accumulation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_accumulating_two_micro_batches_trains_like_one_batch_of_both(family: str) -> None:
    """Defect: the step counter stayed 0 under accumulation and GradientPolicies ran once per micro-batch."""
    x, y = make_data(TWO, N)
    accumulated = trained(wrap(family), keras.optimizers.SGD(2.0**-5, gradient_accumulation_steps=2), x, y, 4)
    whole = trained(wrap(family), keras.optimizers.SGD(2.0**-5), x, y, 8)
    assert whole.state_dict()["clock"] == {"step": 8, "epoch": 1}
    assert_same_outcome(outcome(accumulated), outcome(whole))
    assert accumulated.coefficients == pytest.approx(whole.coefficients, rel=1e-9)


def test_a_step_unit_warmup_ends_under_gradient_accumulation() -> None:
    x, y = make_data(TWO, N)
    model = trained(wrap("PDMP-step"), keras.optimizers.SGD(2.0**-5, gradient_accumulation_steps=4), x, y, 2, 1)
    assert model.step_count == 4 == int(model.optimizer.iterations.numpy())
    assert model.coefficients == {"audio": 4.0, "image": 0.5}


# -- steps a LossScaleOptimizer skips ------------------------------------------------------------------------------


def _with_a_bad_batch(x: dict[str, np.ndarray], y: np.ndarray, batch: int, bad: int) -> tuple[Any, Any, Any, Any]:
    """``x`` with a NaN in batch ``bad``; and the same data without that batch."""
    poisoned = {name: value.copy() for name, value in x.items()}
    poisoned["audio"][bad * batch] = np.nan
    keep = np.r_[0 : bad * batch, (bad + 1) * batch : len(y)]
    return poisoned, y, {name: value[keep] for name, value in x.items()}, y[keep]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_step_the_loss_scale_optimizer_skips_changes_no_policy_state(family: str) -> None:
    """Defect: the transform ran on overflowed steps (InfoReg and MMPareto raised in fit(), AGM's state advanced)."""
    x, y = make_data(TWO, N)
    poisoned, y_all, clean, y_clean = _with_a_bad_batch(x, y, batch=8, bad=1)

    def lso() -> Any:
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(2.0**-5))

    skipped = trained(wrap(family), lso(), poisoned, y_all, 8, epochs=1)
    never_seen = trained(wrap(family), lso(), clean, y_clean, 8, epochs=1)
    assert skipped.step_count == 3 == int(skipped.optimizer.inner_optimizer.iterations.numpy())
    assert_same_outcome(outcome(skipped), outcome(never_seen))


def test_a_skipped_micro_batch_is_left_out_of_the_accumulated_step() -> None:
    """Accumulation and loss scaling together: the skipped micro-batch is not accumulated, the step is taken
    once two finite micro-batches are in, and the policy transforms once per taken step."""
    x, y = make_data(TWO, N)
    poisoned, y_all, clean, y_clean = _with_a_bad_batch(x, y, batch=4, bad=1)

    def lso(steps: int | None) -> Any:
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(2.0**-5, gradient_accumulation_steps=steps))

    skipped = trained(wrap("AGM"), lso(2), poisoned, y_all, 4, epochs=1)
    never_seen = trained(wrap("AGM"), lso(2), clean, y_clean, 4, epochs=1)
    assert skipped.policy.steps == 3 == skipped.step_count  # 7 finite micro-batches: 3 steps, one pending
    assert_same_outcome(outcome(skipped), outcome(never_seen))


def test_ogmge_counts_taken_steps_and_a_skipped_step_leaves_its_coefficients() -> None:
    """OGM-GE scales each micro-batch by its own logits (as the torch hooks do), but counts taken steps only; a
    skipped batch writes no coefficients (its logits are NaN)."""
    x, y = make_data(TWO, N)
    accumulated = ModulatedModel(
        keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), pdmp.OGMGE(NAMES), modality_logits=DECOMPOSED
    )
    trained(accumulated, keras.optimizers.SGD(2.0**-5, gradient_accumulation_steps=2), x, y, 4, epochs=1)
    assert accumulated.step_count == 4 == int(accumulated.optimizer.iterations.numpy())
    poisoned, y_all, _, _ = _with_a_bad_batch(x, y, batch=8, bad=1)
    model = ModulatedModel(
        keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), pdmp.OGMGE(NAMES), modality_logits=DECOMPOSED
    )
    after: list[dict[str, float]] = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: after.append(model.coefficients))
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(2.0**-5)), loss=LOSS)
    model.fit(poisoned, y_all, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[record])
    assert model.step_count == 3
    assert after[1] == after[0] and all(np.isfinite(list(row.values())).all() for row in after)
    assert after[2] != after[0]


# -- wiring a policy needs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ARL", "InfoReg"])
def test_a_policy_whose_loss_needs_unimodal_losses_is_refused_without_unimodal_logits(family: str) -> None:
    """Defect: ARL without unimodal_logits= trained without its loss term, and no warning."""
    factory, options, _ = FAMILIES[family]
    options = {key: value for key, value in options.items() if key != "unimodal_logits"}
    with pytest.raises(ValueError, match=rf"{family} .*unimodal loss.*unimodal_logits="):
        ModulatedModel(keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), factory(), **options)


def test_the_fused_head_named_as_the_unimodal_heads_is_refused() -> None:
    """Defect: SumHeads naming the fused head for both modalities trained MMPareto without complaint."""
    inner = keras_model(TWO, initial_weights(TWO))
    for spec in (SumHeads({name: "head" for name in NAMES}), SumHeads({"audio": "audio_fc2", "image": "audio_fc2"})):
        with pytest.raises(ValueError, match=r"unimodal_logits=SumHeads names .*(fused head|same layer)"):
            ModulatedModel(inner, encoder_layers(TWO), pdmp.MMPareto(NAMES), unimodal_logits=spec)
    fused = ModulatedModel(
        inner, encoder_layers(TWO), pdmp.MMPareto(NAMES), unimodal_logits=lambda m, x, t: dict.fromkeys(NAMES, m(x))
    )
    fused.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    x, y = make_data(TWO, N)
    with pytest.raises(ValueError, match=r"unimodal_logits.*the same tensor"):
        fused.fit(x, y, batch_size=8, epochs=1, verbose=0)


# -- a policy's bad numbers are refused, not applied ------------------------------------------------------------------

BAD = [float("nan"), float("inf"), -1.0]


@register_policy
class _KerasFixed(CoefficientPolicy):
    """Coefficient 1 until step 2, then ``value`` for the audio encoder (a per-step schedule)."""

    kind = "TestKerasFixedBad"

    def __init__(self, modalities: Any, value: float) -> None:
        super().__init__(modalities)
        self.value = value

    def modulation(self, *, step: int, epoch: int, scores: Any = None) -> Modulation:
        return Modulation({"audio": self.value if step >= 2 else 1.0, "image": 1.0})

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "value": self.value}


@register_policy
class _KerasBadTransform(GradientPolicy):
    """The identity until step 2, then ``value`` in ``field`` of the audio encoder."""

    kind = "TestKerasBadTransform"

    def __init__(self, modalities: Any, field: str, value: float) -> None:
        super().__init__(modalities)
        self.field, self.value = field, value

    def compute_transform(self, *, step: int, epoch: int, logit_stats: Any, gradient_stats: Any) -> GradientTransform:
        fields: dict[str, Any] = {"fused": self._all(1.0)}
        if step >= 2:
            fields[self.field] = {**fields.get(self.field, {}), "audio": self.value}
        return GradientTransform(**fields)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "field": self.field, "value": self.value}


def _weights_after_refusal(model: ModulatedModel, match: str) -> None:
    x, y = make_data(TWO, N)
    model.compile(optimizer=keras.optimizers.SGD(2.0**-5), loss=LOSS)
    seen: list[dict[str, np.ndarray]] = []
    keep = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(outcome(model)["weights"]))
    with pytest.raises(Exception, match=match):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[keep])
    assert len(seen) == 2  # refused at step 2, before its update
    after = outcome(model)["weights"]
    for path, value in seen[-1].items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
        assert np.isfinite(after[path]).all()


@pytest.mark.parametrize("value", BAD)
def test_a_coefficient_policys_bad_coefficient_is_refused_not_applied(value: float) -> None:
    """Defect: a custom policy's NaN, infinite or negative coefficient was applied (NaN weights, gradient ascent)."""
    model = ModulatedModel(keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), _KerasFixed(NAMES, value))
    _weights_after_refusal(model, r"_KerasFixed\.modulation\(step=2, epoch=0\) gives modality 'audio' the coefficient")


@pytest.mark.parametrize("field", ["fused", "unimodal", "anchor", "magnitude"])
@pytest.mark.parametrize("value", BAD)
def test_a_gradient_policys_bad_transform_is_refused_not_applied(field: str, value: float) -> None:
    model = ModulatedModel(
        keras_model(TWO, initial_weights(TWO)), encoder_layers(TWO), _KerasBadTransform(NAMES, field, value)
    )
    _weights_after_refusal(
        model, rf"_KerasBadTransform's transform at step 2, epoch 0 sets '{field}' of modality 'audio'"
    )


# -- what get_weights() holds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_get_weights_holds_no_empty_state_and_the_inner_models_weights_come_first(family: str) -> None:
    """Defect: a user comparing two models' get_weights() hit a zero-size array (a stateless policy's state)."""
    model = wrap(family)
    values = model.get_weights()
    assert all(np.asarray(v).size > 0 for v in values), [np.asarray(v).shape for v in values]
    inner = model.inner_model.get_weights()
    assert len(values) == len(inner) + len(model.pdmp_variables)
    for got, want in zip(values, inner, strict=False):
        np.testing.assert_array_equal(got, want)
    assert {v.name for v in model.pdmp_variables} >= {"pdmp_coefficients", "pdmp_step", "pdmp_epoch"}


def test_a_file_with_the_former_empty_state_variable_still_loads() -> None:
    """Stateless policies used to keep a zero-size pdmp_policy_state; such saved variables load into the model."""
    saved = wrap("MMPareto")
    saved.pdmp_step.assign(5)
    store: dict[str, Any] = {}
    saved.save_own_variables(store)
    values = [store[str(i)] for i in range(len(store))]
    position = [v.name for v in saved._trainable_variables + saved._non_trainable_variables].index("pdmp_epoch") + 1
    values.insert(position, np.zeros((0,)))  # where the empty state variable was
    model = wrap("MMPareto")
    model.load_own_variables({str(i): value for i, value in enumerate(values)})
    assert model.step_count == 5


def test_a_custom_loops_skipped_step_does_not_feed_the_learning_policy() -> None:
    """A loop of its own: observe(), a step the LossScaleOptimizer skips, step() -> False; the batch's scores are
    dropped (before, they were folded into AdaptivePDMP at the next coefficient update)."""
    inner = keras_model(TWO, initial_weights(TWO))
    policy = pdmp.AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.4}, horizon=3.0)
    model = ModulatedModel(inner, encoder_layers(TWO), policy, modality_logits=DECOMPOSED)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(2.0**-5)), loss=LOSS)
    model.set_epoch(0)
    x, y = make_data(TWO, 8)
    features = keras.Model(inner.inputs, {name: inner.get_layer(f"{name}_fc2").output for name in NAMES})(x)
    model.observe(pdmp.backends.keras.concat_head_logits(inner.get_layer("head"), features), y)
    variables = model.trainable_weights
    model.optimizer.apply_gradients(zip([tf.fill(v.shape, np.nan) for v in variables], variables, strict=True))
    assert model.step() is False and model.step_count == 0
    state = model.state_dict()
    assert state["policy_state"]["updates"] == 0 and state["pending_scores"] is None
