"""G-Blending in the core (pdmp.rebalancing.GBlending, gblending_weights) and the LossTerms it declares.

No official code was released with the paper; the ``reference_*`` functions transcribe the public
re-implementations' per-estimate arithmetic on plain numbers: MultiBench (pliang279/MultiBench,
``training_structures/gradient_blend.py``: ``train_unimodal``/``train_multimodal`` with ``delta=True``, then
``gb_estimate``'s normalisation) and GeWu-Lab/BalanceBenchmark (``balancemm/trainer/GBlending_trainer.py``,
``super_epoch_origin``), which compute the same thing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdmp.policies import policy_from_config
from pdmp.rebalancing import FUSED, GBlending, LossTerms, ParameterEvent, gblending_weights

MODALITIES = ("audio", "visual")
TERMS = (*MODALITIES, FUSED)


def reference_term_weight(ltN: float, lvN: float, ltNn: float, lvNn: float) -> float:
    """MultiBench ``train_unimodal``'s return value, ``delta=True`` branch (losses before/after n epochs)."""
    oNn = lvNn - ltNn
    oN = lvN - ltN
    oi = oNn - oN
    g = lvNn - lvN
    return abs(g / (oi * oi))


def reference_weights(before: dict, after: dict) -> dict:
    """``gb_estimate``: one raw weight per term (unimodal ones, then the multimodal one), divided by their sum."""
    raw = {k: reference_term_weight(before[k][0], before[k][1], after[k][0], after[k][1]) for k in before}
    z = sum(raw.values())
    return {k: w / z for k, w in raw.items()}


def random_checkpoints(rng: np.random.Generator) -> tuple[dict, dict]:
    """Losses (train, held-out) per term where every held-out loss falls and every gap grows: the regime in
    which the reference's abs() and the core's clipping agree."""
    before, after = {}, {}
    for k in TERMS:
        t0 = rng.uniform(1.0, 2.0)
        v0 = t0 + rng.uniform(0.0, 0.2)
        t1 = t0 - rng.uniform(0.3, 0.8)
        v1 = v0 - rng.uniform(0.01, 0.2)
        # the gap (v - t) grows because the training loss falls by more than the held-out loss
        before[k], after[k] = (t0, v0), (t1, v1)
    return before, after


def split(checkpoint: dict) -> tuple[dict, dict]:
    return {k: v[0] for k, v in checkpoint.items()}, {k: v[1] for k, v in checkpoint.items()}


class TestGBlendingAgainstReference:
    """Departures (also in GBlending's docstring): the losses come from the blended run's own heads at
    super-epoch boundaries, not from copies trained for ``gb_epoch`` epochs from the boundary; the first
    super-epoch uses the given (default equal) weights instead of an estimate; a term whose held-out loss
    did not fall gets 0 (the reference's ``abs`` gives it weight) and an overfitting growth below ``floor``
    counts as ``floor`` (the reference divides by it, by zero when it is 0)."""

    @pytest.mark.parametrize("seed", range(20))
    def test_weights_match_the_reference_where_both_are_defined(self, seed):
        before, after = random_checkpoints(np.random.default_rng(seed))
        train0, held0 = split(before)
        train1, held1 = split(after)
        core = gblending_weights(train0, held0, train1, held1)
        expected = reference_weights(before, after)
        assert set(core) == set(TERMS)
        for k in TERMS:
            assert core[k] == pytest.approx(expected[k], rel=1e-12, abs=0)
        assert sum(core.values()) == pytest.approx(1.0, abs=1e-15)

    def test_a_term_whose_held_out_loss_rose_gets_zero_where_the_reference_gives_it_weight(self):
        before = {"audio": (1.0, 1.1), "visual": (1.0, 1.1), FUSED: (1.0, 1.1)}
        after = {"audio": (0.5, 1.0), "visual": (0.5, 1.3), FUSED: (0.6, 1.05)}
        core = gblending_weights(*split(before), *split(after))
        assert core["visual"] == 0.0
        assert reference_weights(before, after)["visual"] > 0.0
        assert core["audio"] + core[FUSED] == pytest.approx(1.0)

    def test_overfitting_growth_below_the_floor_counts_as_the_floor(self):
        before = {"a": (1.0, 1.5), "b": (1.0, 1.5)}
        after = {"a": (0.5, 1.0), "b": (0.5, 1.2)}  # a's gap is unchanged (dO = 0): the reference divides by 0
        with pytest.raises(ZeroDivisionError):
            reference_weights(before, after)
        core = gblending_weights(*split(before), *split(after), floor=1e-3)
        raw_a = 0.5 / 1e-3**2
        raw_b = 0.3 / 0.2**2
        assert core["a"] == pytest.approx(raw_a / (raw_a + raw_b))

    def test_no_term_generalising_gives_equal_weights(self):
        before = {"a": (1.0, 1.0), "b": (1.0, 1.0), FUSED: (1.0, 1.0)}
        after = {"a": (0.5, 1.2), "b": (0.5, 1.0), FUSED: (0.5, 1.5)}
        assert gblending_weights(*split(before), *split(after)) == pytest.approx(dict.fromkeys(before, 1 / 3))

    def test_bad_losses_are_refused_by_name(self):
        with pytest.raises(ValueError, match="'b'"):
            gblending_weights(
                {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": math.nan}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}
            )
        with pytest.raises(ValueError, match="held_after"):
            gblending_weights({"a": 1.0}, {"a": 1.0}, {"a": 1.0}, {"b": 1.0})


class TestGBlendingPolicy:
    def test_first_super_epoch_uses_the_given_weights_then_the_estimate(self):
        policy = GBlending(MODALITIES, super_epoch=3)
        assert policy.loss_terms() == LossTerms(fused=1 / 3, unimodal={"audio": 1 / 3, "visual": 1 / 3})
        before, after = random_checkpoints(np.random.default_rng(1))
        assert [e for e in range(10) if policy.checkpoint_due(e)] == [0, 3, 6, 9]
        assert policy.checkpoint(0, *split(before)) == pytest.approx(dict.fromkeys(TERMS, 1 / 3))
        weights = policy.checkpoint(3, *split(after))
        assert weights == pytest.approx(reference_weights(before, after), rel=1e-12)
        terms = policy.loss_terms(step=100, epoch=4)
        assert terms.fused == weights[FUSED]
        assert terms.unimodal == {m: weights[m] for m in MODALITIES}
        assert terms.prototype == {} and terms.prototype_entropy == {}
        with pytest.raises(
            TypeError, match=r"GBlending is a pdmp\.rebalancing\.RebalancingPolicy.*needs_held_out_losses"
        ):
            policy.coefficients(step=5, epoch=4)  # a coefficient-only loop would train joint learning

    def test_offline_weights_stay_fixed(self):
        policy = GBlending(MODALITIES, weights={"audio": 0.2, "visual": 0.3, FUSED: 0.5}, online=False)
        assert not any(policy.checkpoint_due(e) for e in range(50))
        assert policy.loss_terms(epoch=40).fused == 0.5

    def test_state_round_trips_mid_run(self):
        rng = np.random.default_rng(2)
        first, second = random_checkpoints(rng)
        third = {k: (v[0] - 0.1, v[1] - 0.01) for k, v in second.items()}
        policy = GBlending(MODALITIES, super_epoch=2)
        policy.checkpoint(0, *split(first))
        policy.checkpoint(2, *split(second))
        restored = policy_from_config(policy.get_config())
        assert restored == policy and isinstance(restored, GBlending)
        restored.load_state_dict(policy.state_dict())
        assert restored.checkpoint(4, *split(third)) == policy.checkpoint(4, *split(third))
        assert restored.state_dict() == policy.state_dict()

    def test_refusals_name_the_problem(self):
        with pytest.raises(ValueError, match="'fused'"):
            GBlending(["audio", "fused"])
        with pytest.raises(ValueError, match="weights"):
            GBlending(MODALITIES, weights={"audio": 1.0, "visual": 1.0})
        policy = GBlending(MODALITIES, super_epoch=2)
        losses = dict.fromkeys(TERMS, 1.0)
        policy.checkpoint(2, losses, losses)
        with pytest.raises(ValueError, match="move forward"):
            policy.checkpoint(2, losses, losses)
        with pytest.raises(ValueError, match="held_out"):
            policy.checkpoint(4, losses, {"audio": 1.0})
        with pytest.raises(ValueError, match="unknown key"):
            policy.load_state_dict({"weights": dict.fromkeys(TERMS, 0.3), "last": None, "extra": 1})


class TestLossTerms:
    def test_combine_is_the_weighted_sum_with_the_entropy_subtracted(self):
        terms = LossTerms(
            fused=0.5,
            unimodal={"audio": 0.25, "visual": 0.0},
            prototype={"audio": 2.0},
            prototype_entropy={"visual": 0.1},
        )
        assert terms.needed() == {"unimodal": ("audio",), "prototype": ("audio",), "prototype_entropy": ("visual",)}
        total = terms.combine(1.0, unimodal={"audio": 2.0}, prototype={"audio": 3.0}, prototype_entropy={"visual": 4.0})
        assert total == pytest.approx(0.5 * 1.0 + 0.25 * 2.0 + 2.0 * 3.0 - 0.1 * 4.0)
        arrays = terms.combine(
            np.ones(2),
            unimodal={"audio": np.ones(2)},
            prototype={"audio": np.ones(2)},
            prototype_entropy={"visual": np.ones(2)},
        )
        assert np.allclose(arrays, 0.5 + 0.25 + 2.0 - 0.1)

    def test_a_weighted_loss_that_is_missing_is_refused(self):
        with pytest.raises(ValueError, match="prototype loss of 'audio'"):
            LossTerms(prototype={"audio": 1.0}).combine(1.0)
        with pytest.raises(ValueError, match="fused loss"):
            LossTerms().combine(None)
        assert LossTerms(fused=0.0, unimodal={"audio": 1.0}).combine(unimodal={"audio": 3.0}) == 3.0

    def test_the_fixed_shape_vector_round_trips(self):
        terms = LossTerms(
            fused=0.5, unimodal={"audio": 0.25}, prototype={"visual": 2.0}, prototype_entropy={"audio": 0.1}
        )
        vector = terms.vector(MODALITIES)
        assert vector.tolist() == [0.5, 0.25, 0.0, 0.0, 2.0, 0.1, 0.0]
        back = LossTerms.from_vector(vector, MODALITIES)
        assert back.combine(
            1.0, unimodal={"audio": 2.0}, prototype={"visual": 3.0}, prototype_entropy={"audio": 4.0}
        ) == (terms.combine(1.0, unimodal={"audio": 2.0}, prototype={"visual": 3.0}, prototype_entropy={"audio": 4.0}))
        with pytest.raises(ValueError, match="not among the modalities"):
            LossTerms(unimodal={"text": 1.0}).vector(MODALITIES)
        with pytest.raises(ValueError, match="7 values"):
            LossTerms.from_vector(np.zeros(3), MODALITIES)

    def test_parameter_event_mixes_toward_the_initial_value(self):
        current, initial = np.array([1.0, 2.0]), np.array([0.0, 4.0])
        assert np.allclose(ParameterEvent("audio", 0.25).apply(current, initial), [0.75, 2.5])
