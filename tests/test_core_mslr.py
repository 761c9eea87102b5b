"""MSLR (modality-specific learning rates), NumPy only: its fixed and dynamic strategies against a
transcription of the reference arithmetic, its state, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import pdmp
from pdmp.policies import policy_from_config


def reference_dynamic(initial: float, accuracies: list[float], history: int) -> list[float]:
    """The public MSLR re-implementation's ``adjust_lr``, transcribed: after epoch e's validation the
    accuracy joins a cycle buffer of the last ``history``; when e % history == 0 and e > 0 the learning
    rate is multiplied by acc(e) / mean(buffer). Returns the rate in force *after* each epoch."""
    buffer: list[float] = []
    lr, rates = initial, []
    for epoch, acc in enumerate(accuracies):
        if len(buffer) >= history:
            buffer.pop(0)
        buffer.append(acc)
        if epoch % history == 0 and epoch > 0:
            lr *= acc / float(np.mean(buffer))
        rates.append(lr)
    return rates


def run_epochs(policy: pdmp.MSLR, per_epoch: list[dict[str, float]], steps: int = 3) -> list[dict[str, float]]:
    """Feed each epoch's score (the same on each of ``steps`` steps); the coefficients in force at the
    start of every following epoch."""
    seen = []
    for epoch, scores in enumerate(per_epoch):
        for step in range(steps):
            policy.coefficients(step=epoch * steps + step, epoch=epoch)
            policy.update(scores)
        seen.append(policy.coefficients(step=(epoch + 1) * steps, epoch=epoch + 1))
    return seen


def test_keep_is_the_unimodal_rates_throughout():
    policy = pdmp.MSLR(["audio", "image"], {"audio": 2.0, "image": 0.5})
    assert not policy.observes_scores
    assert policy.coefficients(step=0, epoch=0) == {"audio": 2.0, "image": 0.5}
    policy.update({"audio": 1.0, "image": 9.0})  # ignored
    assert policy.coefficients(step=99, epoch=9) == {"audio": 2.0, "image": 0.5}
    assert policy.state_dict() == {}


@pytest.mark.parametrize("history", [1, 2, 5])
def test_dynamic_matches_the_reference_arithmetic(history):
    rng = np.random.default_rng(history)
    epochs = 13
    audio = list(rng.uniform(0.2, 0.9, epochs))
    image = list(rng.uniform(0.1, 0.6, epochs))
    policy = pdmp.MSLR(["audio", "image"], {"audio": 2.0, "image": 0.5}, strategy="dynamic", history=history)
    assert policy.observes_scores
    got = run_epochs(policy, [{"audio": a, "image": v} for a, v in zip(audio, image, strict=True)])
    np.testing.assert_allclose([g["audio"] for g in got], reference_dynamic(2.0, audio, history), rtol=1e-12)
    np.testing.assert_allclose([g["image"] for g in got], reference_dynamic(0.5, image, history), rtol=1e-12)


def test_dynamic_uses_the_epoch_mean_of_step_scores():
    policy = pdmp.MSLR(["a", "b"], strategy="dynamic", history=1)
    for scores in ({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}):  # epoch 0: mean a = 2
        policy.update(scores)
    policy.coefficients(epoch=1)
    policy.update({"a": 4.0, "b": 2.0})  # epoch 1: a = 4; window of 1, ratio 1 every time
    assert policy.coefficients(epoch=2) == {"a": 1.0, "b": 1.0}
    two = pdmp.MSLR(["a", "b"], strategy="dynamic", history=2)
    for epoch, value in enumerate((2.0, 2.0, 4.0)):
        two.coefficients(epoch=epoch)
        two.update({"a": value, "b": 1.0})
    # epoch 2 closes with the window (2, 4): a *= 4 / 3; epoch 1 (odd) changed nothing.
    assert two.coefficients(epoch=3) == pytest.approx({"a": 4.0 / 3.0, "b": 1.0})


def test_a_stalled_modality_slows_and_an_improving_one_speeds_up():
    policy = pdmp.MSLR(["a", "b"], strategy="dynamic", history=5)
    per_epoch = [{"a": 0.1 * (e + 1), "b": 0.5 if e < 3 else 0.3} for e in range(6)]
    last = run_epochs(policy, per_epoch)[-1]
    assert last["a"] > 1.0 > last["b"]


def test_dynamic_resumes_exactly_from_its_state():
    scores = [{"a": 0.1 * (e % 4 + 1), "b": 0.2} for e in range(12)]
    whole = run_epochs(pdmp.MSLR(["a", "b"], strategy="dynamic", history=3), scores)
    first = pdmp.MSLR(["a", "b"], strategy="dynamic", history=3)
    run_epochs(first, scores[:7])
    resumed = pdmp.MSLR(["a", "b"], strategy="dynamic", history=3)
    resumed.load_state_dict(first.state_dict())
    rest = []
    for epoch in range(7, 12):
        for step in range(3):
            resumed.coefficients(step=epoch * 3 + step, epoch=epoch)
            resumed.update(scores[epoch])
        rest.append(resumed.coefficients(epoch=epoch + 1))
    assert rest == whole[7:]


def test_state_keeps_its_shape_for_keras_variables():
    policy = pdmp.MSLR(["a", "b"], strategy="dynamic", history=3)
    shape = {k: (len(v) if isinstance(v, dict) else None) for k, v in policy.state_dict().items()}
    run_epochs(policy, [{"a": 0.5, "b": 0.5}] * 5)
    state = policy.state_dict()
    assert {k: (len(v) if isinstance(v, dict) else None) for k, v in state.items()} == shape
    assert all(len(values) == 3 for values in state["window"].values())


def test_config_round_trip():
    for strategy in ("keep", "dynamic"):
        policy = pdmp.MSLR(["a", "b"], {"a": 5.0, "b": 1.0}, strategy=strategy, history=4)
        assert policy_from_config(policy.get_config()) == policy


def test_choose_scales_picks_each_modality_best_unimodal_rate():
    chosen = pdmp.MSLR.choose_scales({"a": {0.5: 0.6, 1.0: 0.7, 5.0: 0.8}, "b": {1.0: 0.5, 2.0: 0.5, 0.5: 0.4}})
    assert chosen == {"a": 5.0, "b": 1.0}  # b: a tie goes to the factor closest to 1
    with pytest.raises(ValueError, match="scale -> score"):
        pdmp.MSLR.choose_scales({"a": {}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "smooth"}, "strategy='smooth'"),
        ({"lr_scales": {"a": 1.0}}, "lr_scales"),
        ({"lr_scales": {"a": 0.0, "b": 1.0}}, "lr_scales\\['a'\\]"),
        ({"history": 0}, "history"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pdmp.MSLR(["a", "b"], **kwargs)


def test_bad_scores_and_state_are_refused_before_anything_changes():
    policy = pdmp.MSLR(["a", "b"], strategy="dynamic")
    with pytest.raises(ValueError, match="not finite"):
        policy.update({"a": float("nan"), "b": 1.0})
    before = policy.state_dict()
    with pytest.raises(ValueError, match="MSLR state"):
        policy.load_state_dict({**before, "window": {"a": [0.0], "b": [0.0]}})
    with pytest.raises(ValueError, match="MSLR state"):
        policy.load_state_dict({"factors": {}})
    assert policy.state_dict() == before
    with pytest.raises(ValueError, match="MSLR state"):  # "keep" learns nothing: it has no state to load
        pdmp.MSLR(["a", "b"]).load_state_dict(before)
