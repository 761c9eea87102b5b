"""The adaptive share controller (NumPy only): its properties, state, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pdmp
from pdmp.adaptive import AdaptivePDMP
from pdmp.diagnostics import modality_scores
from pdmp.policies import policy_from_config

UNDER_OPT = {"audio": 0.71, "image": 0.38}  # the under-optimization regime's unimodal validation accuracies


def fed(policy: AdaptivePDMP, scores: dict[str, float], steps: int = 60) -> AdaptivePDMP:
    for _ in range(steps):
        policy.update(scores)
    return policy


def test_equal_modalities_train_jointly():
    policy = fed(AdaptivePDMP(["a", "b"], {"a": 0.6, "b": 0.6}), {"a": 10.0, "b": 10.0})
    assert policy.coefficients(step=60) == {"a": 1.0, "b": 1.0}


def test_reliance_as_justified_by_accuracy_changes_nothing():
    # Shares 2:1 as the accuracies 0.8:0.4; and a ratio inside the dead band (1.2 < 1.25).
    assert fed(AdaptivePDMP(["a", "b"], {"a": 0.8, "b": 0.4}), {"a": 20.0, "b": 10.0}).coefficients() == {
        "a": 1.0,
        "b": 1.0,
    }
    near = fed(AdaptivePDMP(["a", "b"], {"a": 0.5, "b": 0.5}), {"a": 10.0, "b": 12.0})
    assert near.coefficients() == {"a": 1.0, "b": 1.0}


def test_a_memorising_weak_branch_is_held_back_and_the_dominant_one_boosted():
    # The under-optimization regime: the weak image branch holds 72% of the true-class mass.
    policy = fed(AdaptivePDMP(["audio", "image"], UNDER_OPT), {"audio": 28.0, "image": 72.0}, steps=200)
    # Independent arithmetic: target image share 0.38 / 1.09; gap log(target / 0.72) widened by the dead band.
    target_image = 0.38 / 1.09
    expected_r = math.exp(4.0 * (math.log(target_image / 0.72) + math.log(1.25)))
    got = policy.coefficients()
    assert got["image"] == pytest.approx(expected_r, rel=1e-9)
    assert got["image"] == pytest.approx(0.13411, abs=1e-4)
    assert got["audio"] == 10.0  # exp(4 * 0.621) = 12.0, capped at gamma_max


def test_coefficients_are_one_before_any_informative_batch_and_never_divide_zero_by_zero():
    policy = AdaptivePDMP(["a", "b"], {"a": 0.9, "b": 0.2})
    assert policy.coefficients() == {"a": 1.0, "b": 1.0}
    fed(policy, {"a": 0.0, "b": 0.0})
    assert policy.shares() is None and policy.coefficients() == {"a": 1.0, "b": 1.0}


def test_warmup_keeps_one_but_learns():
    policy = fed(AdaptivePDMP(["audio", "image"], UNDER_OPT, warmup=1), {"audio": 28.0, "image": 72.0})
    assert policy.coefficients(epoch=0) == {"audio": 1.0, "image": 1.0}
    assert policy.coefficients(epoch=1)["image"] < 0.2


@settings(max_examples=200, deadline=None)
@given(
    accuracies=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4),
    batches=st.lists(st.lists(st.floats(0.0, 64.0), min_size=4, max_size=4), min_size=1, max_size=30),
)
def test_bounds_hold_for_any_scores(accuracies, batches):
    names = [f"m{i}" for i in range(len(accuracies))]
    policy = AdaptivePDMP(names, dict(zip(names, accuracies, strict=True)))
    for batch in batches:
        policy.update(dict(zip(names, batch, strict=False)))
        k = policy.coefficients()
        assert all(np.isfinite(list(k.values())))
        assert 1.0 <= k[policy.dominant] <= policy.gamma_max  # never below 1: no balancing of the dominant one
        assert all(policy.gamma_min <= k[n] <= 1.0 for n in names if n != policy.dominant)


def test_one_outlier_batch_moves_shares_by_at_most_one_horizon_fraction():
    policy = fed(AdaptivePDMP(["a", "b"], {"a": 0.7, "b": 0.4}, horizon=20), {"a": 30.0, "b": 30.0})
    before = policy.shares()["a"]
    policy.update({"a": 64.0, "b": 0.0})
    assert abs(policy.shares()["a"] - before) <= 1 / 20 + 1e-12


def test_replicas_agree_given_all_reduced_sums():
    # Scores are sums, so two half-batches summed (what DDP / MirroredStrategy all-reduce) equal the full batch.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 32)
    logits = {"a": rng.normal(size=(32, 5)), "b": rng.normal(size=(32, 5))}
    halves = [modality_scores({m: v[s] for m, v in logits.items()}, labels[s]) for s in (slice(0, 16), slice(16, 32))]
    summed = {m: halves[0][m] + halves[1][m] for m in logits}
    full = modality_scores(logits, labels)
    one, two = AdaptivePDMP(["a", "b"], {"a": 0.9, "b": 0.3}), AdaptivePDMP(["a", "b"], {"a": 0.9, "b": 0.3})
    for _ in range(5):
        one.update(full)
        two.update(summed)
    assert one.coefficients() == pytest.approx(two.coefficients(), rel=1e-12)


def test_state_resumes_exactly_and_config_is_literal():
    policy = AdaptivePDMP.from_ranking(
        pdmp.Ranking(order=("audio", "image"), scores=UNDER_OPT), gain=3.0, horizon=10.0, warmup=1
    )
    assert policy.get_config() == {
        "type": "AdaptivePDMP",
        "modalities": ["audio", "image"],
        "accuracies": {"audio": 0.71, "image": 0.38},
        "gain": 3.0,
        "tolerance": 1.25,
        "gamma_max": 10.0,
        "gamma_min": 0.01,
        "horizon": 10.0,
        "warmup": 1,
        "auxiliary": 0.0,
        "auxiliary_scope": "dominant",
    }
    rng = np.random.default_rng(1)
    stream = [{"audio": float(a), "image": float(b)} for a, b in rng.uniform(0, 64, size=(40, 2))]
    for scores in stream[:20]:
        policy.update(scores)
    resumed = policy_from_config(policy.get_config())
    resumed.load_state_dict(policy.state_dict())
    for scores in stream[20:]:
        policy.update(scores)
        resumed.update(scores)
        assert resumed.coefficients(epoch=2) == policy.coefficients(epoch=2)
    assert resumed.updates == 40


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accuracies": {"a": 0.5}}, ValueError, "missing modality"),
        ({"accuracies": {"a": 0.5, "b": 1.5}}, ValueError, r"accuracies\['b'\]=1.5 is not an accuracy"),
        ({"accuracies": {"a": 0.5, "b": float("nan")}}, ValueError, r"accuracies\['b'\]"),
        ({"accuracies": [0.5, 0.4]}, TypeError, "accuracies must be a dict"),
        ({"tolerance": 0.5}, ValueError, "tolerance must be >= 1"),
        ({"gamma_min": 2.0}, ValueError, "gamma_min <= 1 <= gamma_max"),
        ({"horizon": 0.5}, ValueError, "horizon must be >= 1"),
        ({"gain": -1.0}, ValueError, "gain"),
        ({"auxiliary": -1.0}, ValueError, "auxiliary"),
        ({"auxiliary": float("nan")}, ValueError, "auxiliary"),
        ({"auxiliary_scope": "weak"}, ValueError, r"auxiliary_scope must be one of \['dominant', 'all'\]"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    options = {"accuracies": {"a": 0.5, "b": 0.4}, **kwargs}
    with pytest.raises(error, match=match):
        AdaptivePDMP(["a", "b"], **options)


def test_bad_scores_and_corrupt_state_change_nothing():
    policy = fed(AdaptivePDMP(["a", "b"], {"a": 0.8, "b": 0.3}), {"a": 5.0, "b": 9.0}, steps=3)
    before = policy.state_dict()
    with pytest.raises(ValueError, match="score of 'b' is nan"):
        policy.update({"a": 1.0, "b": float("nan")})
    with pytest.raises(ValueError, match="unknown modality"):
        policy.update({"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="invalid values"):
        policy.load_state_dict({"ema": {"a": -1.0, "b": 2.0}, "updates": 3})
    with pytest.raises(ValueError, match="updates"):
        policy.load_state_dict({"ema": {"a": 1.0, "b": 2.0}, "updates": -3})
    assert policy.state_dict() == before
    with pytest.raises(ValueError, match="has no training state"):
        pdmp.PDMP(["a", "b"], "a").load_state_dict({"ema": {}})


# -- auxiliary unimodal losses -------------------------------------------------------------------------


def test_auxiliary_losses_are_off_by_default_and_zero_where_reliance_is_justified():
    plain = fed(AdaptivePDMP(["audio", "image"], UNDER_OPT), {"audio": 28.0, "image": 72.0})
    assert not plain.uses_unimodal_losses and plain.unimodal_loss_weights() == {"audio": 0.0, "image": 0.0}
    for scope in ("dominant", "all"):
        equal = fed(
            AdaptivePDMP(["a", "b"], {"a": 0.6, "b": 0.6}, auxiliary=4.0, auxiliary_scope=scope), {"a": 9, "b": 10}
        )
        assert equal.uses_unimodal_losses and equal.unimodal_loss_weights() == {"a": 0.0, "b": 0.0}
        justified = fed(
            AdaptivePDMP(["a", "b"], {"a": 0.8, "b": 0.4}, auxiliary=4.0, auxiliary_scope=scope), {"a": 20, "b": 10}
        )
        assert justified.unimodal_loss_weights() == {"a": 0.0, "b": 0.0}
    fresh = AdaptivePDMP(["a", "b"], {"a": 0.8, "b": 0.4}, auxiliary=4.0)
    assert fresh.unimodal_loss_weights() == {"a": 0.0, "b": 0.0}  # nothing observed yet


def test_an_under_relied_dominant_modality_gets_its_own_loss():
    # The under-optimization regime: the memorising image branch holds 72% of the true-class mass.
    policy = fed(AdaptivePDMP(["audio", "image"], UNDER_OPT, auxiliary=4.0), {"audio": 28.0, "image": 72.0}, steps=200)
    # Independent arithmetic: deficit = log(target / share) - log(tolerance); weight = 4 (1 - e^(-gain deficit)).
    deficit = math.log((0.71 / 1.09) / 0.28) - math.log(1.25)
    weights = policy.unimodal_loss_weights(epoch=3)
    assert weights["audio"] == pytest.approx(4.0 * (1.0 - math.exp(-4.0 * deficit)), rel=1e-9)
    assert weights["audio"] == pytest.approx(3.6666, abs=1e-4)
    assert weights["image"] == 0.0  # the over-relied weak branch: slowed by its coefficient, no extra loss
    assert policy.coefficients()["audio"] == 10.0  # the gradient coefficients are unchanged by the option
    warm = fed(AdaptivePDMP(["audio", "image"], UNDER_OPT, auxiliary=4.0, warmup=2), {"audio": 28.0, "image": 72.0})
    assert warm.unimodal_loss_weights(epoch=1) == {"audio": 0.0, "image": 0.0}
    assert warm.unimodal_loss_weights(epoch=2)["audio"] > 3.0


def test_scope_all_also_gives_an_under_relied_weak_modality_a_loss():
    # Audio dominant (0.9 vs 0.6); the model relies on audio 9:1, so image (target share 0.4) is under-relied.
    accuracies = {"audio": 0.9, "image": 0.6}
    only_dominant = fed(AdaptivePDMP(["audio", "image"], accuracies, auxiliary=2.0), {"audio": 90.0, "image": 10.0})
    everyone = fed(
        AdaptivePDMP(["audio", "image"], accuracies, auxiliary=2.0, auxiliary_scope="all"),
        {"audio": 90.0, "image": 10.0},
    )
    assert only_dominant.unimodal_loss_weights() == {"audio": 0.0, "image": 0.0}
    deficit = math.log(0.4 / 0.1) - math.log(1.25)
    assert everyone.unimodal_loss_weights() == pytest.approx({"audio": 0.0, "image": 2.0 * -math.expm1(-4.0 * deficit)})


@settings(max_examples=60, deadline=None)
@given(
    accuracies=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
    batches=st.lists(st.tuples(st.floats(0.0, 64.0), st.floats(0.0, 64.0)), min_size=1, max_size=40),
    auxiliary=st.floats(0.0, 10.0),
)
def test_auxiliary_weights_stay_in_bounds(accuracies, batches, auxiliary):
    targets = dict(zip("ab", accuracies, strict=True))
    policy = AdaptivePDMP(["a", "b"], targets, auxiliary=auxiliary, auxiliary_scope="all")
    for a, b in batches:
        policy.update({"a": a, "b": b})
        weights = policy.unimodal_loss_weights()
        assert all(0.0 <= w <= auxiliary and math.isfinite(w) for w in weights.values())


def test_auxiliary_configuration_round_trips_and_resumes():
    policy = AdaptivePDMP(["audio", "image"], UNDER_OPT, auxiliary=4.0, auxiliary_scope="all", horizon=5.0)
    fed(policy, {"audio": 10.0, "image": 50.0}, steps=7)
    resumed = policy_from_config(policy.get_config())
    resumed.load_state_dict(policy.state_dict())
    assert resumed.get_config() == policy.get_config()
    assert resumed.uses_unimodal_losses
    assert resumed.unimodal_loss_weights(epoch=1) == policy.unimodal_loss_weights(epoch=1)
