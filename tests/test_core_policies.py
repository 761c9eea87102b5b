"""Coefficient policies: PDMP schedule, OGM-GE formula, config round-trips, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdmp import OGMGE, PDMP, Clock, NoModulation, Ranking, modality_scores, policy_from_config

MODALITIES = ("audio", "image")


def test_pdmp_gives_gamma_p_to_the_dominant_and_gamma_r_to_the_rest() -> None:
    policy = PDMP(("audio", "image", "text"), dominant="image", gamma_p=12.0, gamma_r=0.25)
    assert policy.coefficients(epoch=0) == {"audio": 0.25, "image": 12.0, "text": 0.25}


def test_pdmp_from_ranking() -> None:
    ranking = Ranking(order=("image", "audio"), scores={"image": 0.9, "audio": 0.6})
    policy = PDMP.from_ranking(ranking, gamma_p=10, gamma_r=1)
    assert policy.dominant == "image"
    assert policy.coefficients() == {"image": 10.0, "audio": 1.0}


def test_warmup_ramp_and_end_in_epochs() -> None:
    policy = PDMP(MODALITIES, "audio", gamma_p=9.0, gamma_r=0.5, warmup=2, ramp=3, end=8)
    audio = [policy.coefficients(epoch=e)["audio"] for e in range(10)]
    image = [policy.coefficients(epoch=e)["image"] for e in range(10)]
    assert audio == pytest.approx([1, 1, 1 + 8 / 3, 1 + 16 / 3, 9, 9, 9, 9, 1, 1])
    assert image == pytest.approx([1, 1, 1 - 0.5 / 3, 1 - 1 / 3, 0.5, 0.5, 0.5, 0.5, 1, 1])


def test_warmup_in_steps_ignores_epochs() -> None:
    policy = PDMP(MODALITIES, "audio", warmup=100, unit="step")
    assert policy.coefficients(step=99, epoch=50)["audio"] == 1.0
    assert policy.coefficients(step=100, epoch=0)["audio"] == 10.0


def test_no_modulation() -> None:
    policy = NoModulation(MODALITIES)
    assert policy.coefficients(step=5, epoch=5) == {"audio": 1.0, "image": 1.0}


def _reference_ogm(s_a: float, s_v: float, alpha: float) -> tuple[float, float]:
    """METHOD.md's two-modality OGM-GE, written the way the paper's code reads."""
    ratio_v = s_v / s_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        return 1.0, 1 - math.tanh(alpha * max(ratio_v, 0.0))
    return 1 - math.tanh(alpha * max(ratio_a, 0.0)), 1.0


def test_ogmge_matches_the_reference_formula_for_two_modalities() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=32)
    for trial in range(20):
        logits = {"a": rng.normal(size=(32, 4)) * (trial % 3 + 1), "v": rng.normal(size=(32, 4))}
        scores = modality_scores(logits, labels)
        expected_a, expected_v = _reference_ogm(scores["a"], scores["v"], alpha=0.8)
        got = OGMGE(("a", "v"), alpha=0.8).coefficients(epoch=0, logits=logits, labels=labels)
        assert got["a"] == pytest.approx(expected_a, rel=1e-12)
        assert got["v"] == pytest.approx(expected_v, rel=1e-12)


def test_ogmge_scores_are_sums_of_true_class_softmax() -> None:
    logits = {"a": np.log(np.array([[0.7, 0.3], [0.4, 0.6]])), "v": np.zeros((2, 2))}
    scores = modality_scores(logits, [0, 1])
    assert scores["a"] == pytest.approx(0.7 + 0.6)
    assert scores["v"] == pytest.approx(1.0)


def test_ogmge_window_is_inclusive_and_noise_only_inside() -> None:
    policy = OGMGE(MODALITIES, alpha=0.5, start_epoch=2, end_epoch=4)
    scores = {"audio": 10.0, "image": 5.0}
    inside = [policy.modulation(step=0, epoch=e, scores=scores) for e in (2, 4)]
    outside = [policy.modulation(step=0, epoch=e, scores=scores) for e in (1, 5)]
    assert all(m.noise and m.coefficients["audio"] == pytest.approx(1 - math.tanh(1.0)) for m in inside)
    assert all(not m.noise and m.coefficients == {"audio": 1.0, "image": 1.0} for m in outside)
    assert not OGMGE(MODALITIES, noise=False).modulation(step=0, epoch=0, scores=scores).noise


def test_ogmge_three_modalities_compare_with_mean_of_others() -> None:
    policy = OGMGE(("a", "b", "c"), alpha=0.1)
    got = policy.modulation(step=0, epoch=0, scores={"a": 30.0, "b": 10.0, "c": 20.0}).coefficients
    assert got["a"] == pytest.approx(1 - math.tanh(0.1 * 30 / 15))
    assert got["b"] == 1.0
    assert got["c"] == 1.0  # rho_c = 20 / mean(30, 10) = 1 exactly: not above 1


def test_ogmge_needs_logits() -> None:
    with pytest.raises(ValueError, match="needs this batch's per-modality logits"):
        OGMGE(MODALITIES).coefficients(epoch=0)
    with pytest.raises(ValueError, match="unknown modality"):
        OGMGE(MODALITIES).coefficients(epoch=0, logits={"audio": np.zeros((1, 2)), "vid": np.zeros((1, 2))}, labels=[0])


@pytest.mark.parametrize(
    "policy",
    [
        NoModulation(MODALITIES),
        PDMP(MODALITIES, "image", gamma_p=15, gamma_r=0.1, warmup=3, unit="step", ramp=10, end=1000),
        PDMP(MODALITIES, "image", gamma_p=0.5, gamma_r=2.0, allow_inverse=True),
        OGMGE(("a", "b", "c"), alpha=0.1, start_epoch=1, end_epoch=30, noise=False, conv_kernels_only=True),
    ],
)
def test_configs_round_trip(policy) -> None:
    config = policy.get_config()
    rebuilt = policy_from_config(config)
    assert rebuilt == policy
    assert rebuilt.get_config() == config
    assert type(rebuilt) is type(policy)
    # ``==`` compares get_config() output, which cannot see a field get_config forgot: compare behaviour.
    assert _behaviour(rebuilt) == _behaviour(policy)
    assert rebuilt.modulates((8, 3, 3, 3)) == policy.modulates((8, 3, 3, 3))
    assert rebuilt.modulates((8, 3)) == policy.modulates((8, 3))
    assert rebuilt.adds_noise == policy.adds_noise


def _behaviour(policy) -> list:
    """Coefficients (and noise flags) over a range of steps and epochs, with fixed OGM-GE scores."""
    scores = {name: float(3 + 2 * i) for i, name in enumerate(policy.modalities)}
    return [
        (
            modulation.coefficients,
            modulation.noise,
        )
        for t in (0, 1, 2, 3, 5, 9, 12, 29, 30, 31, 999, 1000, 1001)
        for modulation in (
            policy.modulation(step=t, epoch=0, scores=scores),
            policy.modulation(step=0, epoch=t, scores=scores),
            policy.modulation(step=t, epoch=t, scores=scores),
        )
    ]


def test_configs_are_the_documented_literals() -> None:
    # Regression guard: a field dropped from get_config() (end, ramp, ...) would still round-trip with ==.
    pdmp_policy = PDMP(MODALITIES, "image", gamma_p=15, gamma_r=0.1, warmup=3, unit="step", ramp=10, end=1000)
    assert pdmp_policy.get_config() == {
        "type": "PDMP",
        "modalities": ["audio", "image"],
        "dominant": "image",
        "gamma_p": 15.0,
        "gamma_r": 0.1,
        "warmup": 3,
        "unit": "step",
        "ramp": 10,
        "end": 1000,
        "allow_inverse": False,
    }
    ogm = OGMGE(("a", "b", "c"), alpha=0.1, start_epoch=1, end_epoch=30, noise=False, conv_kernels_only=True)
    assert ogm.get_config() == {
        "type": "OGMGE",
        "modalities": ["a", "b", "c"],
        "alpha": 0.1,
        "start_epoch": 1,
        "end_epoch": 30,
        "noise": False,
        "conv_kernels_only": True,
    }
    assert NoModulation(MODALITIES).get_config() == {"type": "NoModulation", "modalities": ["audio", "image"]}
    # The rebuilt policy's schedule, written out: warm-up 3 steps, 10-step ramp, back to 1 at step 1000.
    rebuilt = policy_from_config(pdmp_policy.get_config())
    image = [rebuilt.coefficients(step=t)["image"] for t in (0, 2, 3, 7, 12, 13, 999, 1000)]
    assert image == pytest.approx([1.0, 1.0, 2.4, 8.0, 15.0, 15.0, 15.0, 1.0])


def test_ogmge_coefficients_against_literal_numbers() -> None:
    # Written out by hand, not from the core: s_a = 0.7 + 0.6 = 1.3, s_v = 0.5 + 0.5 = 1.0, rho_a = 1.3,
    # k_a = 1 - tanh(0.8 * 1.3) = 0.2221119334228151, k_v = 1.
    logits = {"a": np.log(np.array([[0.7, 0.3], [0.4, 0.6]])), "v": np.zeros((2, 2))}
    got = OGMGE(("a", "v"), alpha=0.8).coefficients(epoch=0, logits=logits, labels=[0, 1])
    assert got == {"a": pytest.approx(0.2221119334228151, rel=1e-12), "v": 1.0}
    # Three modalities: rho_a = 30 / mean(10, 20) = 2, k_a = 1 - tanh(0.1 * 2) = 0.802624679775096.
    three = OGMGE(("a", "b", "c"), alpha=0.1).modulation(step=0, epoch=0, scores={"a": 30.0, "b": 10.0, "c": 20.0})
    assert three.coefficients == {"a": pytest.approx(0.802624679775096, rel=1e-12), "b": 1.0, "c": 1.0}
    # An exact tie: both 1 (the reference code would give its audio modality 1 - tanh(alpha)).
    tie = OGMGE(("a", "v"), alpha=0.5).modulation(step=0, epoch=0, scores={"a": 4.0, "v": 4.0})
    assert tie.coefficients == {"a": 1.0, "v": 1.0}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PDMP(MODALITIES, "audio", gamma_p=0), "gamma_p must be a finite number > 0"),
        (lambda: PDMP(MODALITIES, "audio", gamma_p=-1), "gamma_p must be a finite number > 0"),
        (lambda: PDMP(MODALITIES, "audio", gamma_r=0), "gamma_r must be a finite number > 0"),
        (lambda: PDMP(MODALITIES, "audio", gamma_r=float("nan")), "gamma_r must be a finite number > 0"),
        (lambda: PDMP(MODALITIES, "audio", gamma_p=1, gamma_r=2), "allow_inverse=True"),
        (lambda: PDMP(MODALITIES, "audoi"), "unknown modality 'audoi'; known: audio, image"),
        (lambda: PDMP(("audio",), "audio"), "at least two modalities"),
        (lambda: PDMP(("audio", "audio"), "audio"), "duplicate modality name"),
        (lambda: PDMP(("audio", ""), "audio"), "empty modality name"),
        (lambda: PDMP(MODALITIES, "audio", unit="batch"), "unit must be 'epoch' or 'step'"),
        (lambda: PDMP(MODALITIES, "audio", warmup=-1), "warmup must be an integer >= 0"),
        (lambda: PDMP(MODALITIES, "audio", warmup=5, end=5), "end=5 must be greater than warmup=5"),
        (lambda: OGMGE(MODALITIES, alpha=0), "alpha must be a finite number > 0"),
        (lambda: OGMGE(MODALITIES, start_epoch=5, end_epoch=2), "end_epoch=2 must be >= start_epoch=5"),
        (lambda: policy_from_config({"type": "Adaptive"}), "unknown policy type 'Adaptive'"),
        (lambda: policy_from_config({"gamma_p": 1}), "'type' key"),
        (lambda: policy_from_config({"type": "PDMP", "modalities": ["a", "b"]}), "invalid PDMP config"),
        (lambda: PDMP("av", "a"), "single string 'av'"),
        (lambda: NoModulation("audio"), "single string 'audio'"),
        (lambda: OGMGE("av"), "single string 'av'"),
        (
            lambda: PDMP(MODALITIES, "image", gamma_p=1, gamma_r=2, allow_inverse="no"),
            "allow_inverse must be True or False",
        ),
        (lambda: OGMGE(MODALITIES, noise="false"), "noise must be True or False"),
        (lambda: OGMGE(MODALITIES, conv_kernels_only=1), "conv_kernels_only must be True or False"),
        (lambda: PDMP(MODALITIES, "audio", gamma_p="10"), "gamma_p must be a number, got str '10'"),
        (lambda: PDMP(MODALITIES, "audio", gamma_r=True), "gamma_r must be a number, got bool"),
        (lambda: PDMP(MODALITIES, "audio", ramp=2.5), "ramp must be an integer >= 0, got 2.5"),
        (lambda: PDMP(MODALITIES, 0), "PDMP dominant must be a modality name"),
        (
            lambda: policy_from_config(
                {
                    "type": "OGMGE",
                    "modalities": ["a", "v"],
                    "alpha": 0.8,
                    "start_epoch": 0,
                    "end_epoch": 5,
                    "noise": "no",
                    "conv_kernels_only": False,
                }
            ),
            "noise must be True or False, got str 'no'",
        ),
        (lambda: policy_from_config({"type": "NoModulation", "modalities": "av"}), "single string 'av'"),
        (lambda: PDMP.from_ranking({"order": ["a", "b"]}), "expects a pdmp.Ranking"),
        (lambda: PDMP(MODALITIES, "audio").coefficients(step=-1), "step must be an integer >= 0"),
    ],
)
def test_bad_policy_input_is_named(build, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_policy_checks_modality_names() -> None:
    policy = PDMP(MODALITIES, "audio")
    policy.check_modalities(["image", "audio"], where="modulator")
    expected = r"unknown modality\(ies\) \['video'\] and missing modality\(ies\) \['image'\]"
    with pytest.raises(ValueError, match=expected):
        policy.check_modalities(["audio", "video"], where="modulator")


def test_clock_state_round_trip_and_validation() -> None:
    clock = Clock(step=17, epoch=3)
    restored = Clock()
    restored.load_state_dict(clock.state_dict())
    assert restored == clock
    with pytest.raises(ValueError, match="state\\['step'\\] must be an integer >= 0"):
        restored.load_state_dict({"step": -1, "epoch": 0})
    # All or nothing: a bad epoch leaves the step as it was (regression: the step was overwritten first).
    with pytest.raises(ValueError, match="state\\['epoch'\\] must be an integer >= 0"):
        restored.load_state_dict({"step": 99, "epoch": "3"})
    assert restored == clock
    with pytest.raises(TypeError, match="Clock state must be a dict"):
        restored.load_state_dict([17, 3])


def test_numpy_booleans_are_real_booleans() -> None:
    policy = PDMP(MODALITIES, "image", gamma_p=1, gamma_r=2, allow_inverse=np.True_)
    assert policy.allow_inverse is True
    assert OGMGE(MODALITIES, noise=np.False_).noise is False


gammas = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(gammas, gammas, st.integers(0, 20), st.integers(0, 20), st.sampled_from(["epoch", "step"]))
def test_pdmp_coefficients_positive_finite_and_monotone(gamma_a, gamma_b, warmup, ramp, unit) -> None:
    gamma_p, gamma_r = max(gamma_a, gamma_b), min(gamma_a, gamma_b)
    policy = PDMP(MODALITIES, "audio", gamma_p=gamma_p, gamma_r=gamma_r, warmup=warmup, ramp=ramp, unit=unit)
    previous = {"audio": 1.0, "image": 1.0}
    for t in range(warmup + ramp + 3):
        got = policy.coefficients(step=t, epoch=t)
        assert all(math.isfinite(k) and k > 0 for k in got.values())
        # Distance from 1 only grows until the full gammas are reached.
        assert abs(got["audio"] - 1) >= abs(previous["audio"] - 1) - 1e-12
        assert abs(got["image"] - 1) >= abs(previous["image"] - 1) - 1e-12
        if t < warmup:
            assert got == {"audio": 1.0, "image": 1.0}
        previous = got
    assert previous["audio"] == pytest.approx(gamma_p) and previous["image"] == pytest.approx(gamma_r)


scores_strategy = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(scores_strategy, min_size=2, max_size=5), st.floats(min_value=1e-3, max_value=50))
def test_ogmge_coefficients_in_unit_interval_and_one_for_the_weaker(values, alpha) -> None:
    names = [f"m{i}" for i in range(len(values))]
    scores = dict(zip(names, values, strict=True))
    got = OGMGE(names, alpha=alpha).modulation(step=0, epoch=0, scores=scores).coefficients
    assert all(0 < k <= 1 for k in got.values())
    weakest = min(names, key=lambda n: scores[n])
    assert got[weakest] == 1.0


def test_parameter_selection_and_noise_flag_for_adapters() -> None:
    # Every policy modulates every parameter unless it says otherwise; OGM-GE's reference mode
    # keeps only 4-D conv kernels. Adapters read these instead of policy-specific attributes.
    assert PDMP(["a", "v"], "a").modulates((3, 4)) and not PDMP(["a", "v"], "a").adds_noise
    assert NoModulation(["a", "v"]).modulates((7,))
    reference = OGMGE(["a", "v"], conv_kernels_only=True)
    assert reference.modulates((8, 3, 3, 3)) and not reference.modulates((8, 3)) and not reference.modulates((8,))
    assert OGMGE(["a", "v"]).modulates((8,)) and OGMGE(["a", "v"]).adds_noise
    assert not OGMGE(["a", "v"], noise=False).adds_noise
