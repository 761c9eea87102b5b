"""The default recipe (NumPy only): what pdmp.recipe builds from a ranking, its schedule, bad input."""

from __future__ import annotations

import pytest

import pdmp
from pdmp.policies import policy_from_config
from pdmp.recipes import DEFAULT, VARIANTS, Recipe

RANKING = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.8, "image": 0.3})


def test_recipe_boosts_the_ranked_dominant_modality_after_the_warmup():
    policy = pdmp.recipe(RANKING)
    boost = VARIANTS[DEFAULT]["boost"]
    assert policy.dominant == "audio"
    assert policy.coefficients(step=0, epoch=0) == {"audio": 1.0, "image": 1.0}
    assert policy.coefficients(step=50, epoch=1) == {"audio": boost, "image": 1.0}
    reversed_ranking = pdmp.Ranking(order=("image", "audio"), scores={"audio": 0.3, "image": 0.8})
    assert pdmp.recipe(reversed_ranking).coefficients(epoch=3) == {"audio": 1.0, "image": boost}


def test_auxiliary_losses_from_the_first_step_in_their_scope():
    everyone = Recipe(["a", "b", "c"], "b", boost=3.0, auxiliary=4.0, auxiliary_scope="all")
    assert everyone.uses_unimodal_losses
    assert everyone.unimodal_loss_weights(step=0, epoch=0) == {"a": 4.0, "b": 4.0, "c": 4.0}
    dominant = Recipe(["a", "b", "c"], "b", boost=3.0, auxiliary=4.0, auxiliary_scope="dominant")
    assert dominant.unimodal_loss_weights(step=0, epoch=0) == {"a": 0.0, "b": 4.0, "c": 0.0}
    none = Recipe(["a", "b"], "a", boost=2.0)
    assert not none.uses_unimodal_losses
    assert none.unimodal_loss_weights() == {"a": 0.0, "b": 0.0}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_round_trips(variant):
    policy = pdmp.recipe(RANKING, variant, warmup=2)
    assert policy.warmup == 2
    assert policy_from_config(policy.get_config()) == policy
    assert policy.boost == VARIANTS[variant]["boost"] and policy.auxiliary == VARIANTS[variant]["auxiliary"]


def test_at_most_three_variants_and_the_default_is_one_of_them():
    assert len(VARIANTS) <= 3 and DEFAULT in VARIANTS


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pdmp.recipe(RANKING, "aux9"), ValueError, "unknown variant 'aux9'"),
        (lambda: pdmp.recipe({"audio": 0.8}), TypeError, "needs a pdmp.Ranking"),  # type: ignore[arg-type]
        (lambda: Recipe(["a", "b"], "c"), ValueError, "'c'"),
        (lambda: Recipe(["a", "b"], "a", boost=0.0), ValueError, "boost"),
        (lambda: Recipe(["a", "b"], "a", auxiliary=-1.0), ValueError, "auxiliary"),
        (lambda: Recipe(["a", "b"], "a", auxiliary_scope="weak"), ValueError, "auxiliary_scope='weak'"),  # type: ignore[arg-type]
        (lambda: Recipe(["a", "b"], "a", warmup=-1), ValueError, "warmup"),
    ],
)
def test_bad_input_is_refused_with_the_fix(call, error, match):
    with pytest.raises(error, match=match):
        call()
