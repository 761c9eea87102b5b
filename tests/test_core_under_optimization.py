"""under_optimization: is the multimodal model below its best unimodal model? And the training-seed check."""

from __future__ import annotations

import numpy as np
import pytest

import pdmp
from pdmp import Ranking, UnderOptimization, under_optimization
from pdmp.ranking import check_training_seeds, check_unimodal_request, combine_rankings


def ranking(audio: float = 0.8, image: float = 0.6, metric: str = "accuracy") -> Ranking:
    scores = {"audio": audio, "image": image}
    return Ranking(order=pdmp.ranking.order_by_score(scores), scores=scores, metric=metric)


def test_a_fused_model_below_its_best_unimodal_model_is_under_optimized() -> None:
    result = under_optimization(ranking(), 0.75)
    assert result == UnderOptimization(
        metric="accuracy",
        fused_score=0.75,
        best_modality="audio",
        best_unimodal_score=0.8,
        gap=pytest.approx(0.05),  # type: ignore[arg-type]
        under_optimized=True,
        tolerance=0.0,
    )


def test_a_fused_model_at_or_above_the_best_is_not() -> None:
    assert not under_optimization(ranking(), 0.8).under_optimized  # equal: not below
    above = under_optimization(ranking(), 0.9)
    assert not above.under_optimized and above.gap == pytest.approx(-0.1)


def test_tolerance_ignores_a_small_shortfall() -> None:
    assert not under_optimization(ranking(), 0.79, tolerance=0.02).under_optimized
    assert under_optimization(ranking(), 0.77, tolerance=0.02).under_optimized


def test_per_seed_fused_scores_are_averaged_and_compared_with_the_seed_means() -> None:
    combined = combine_rankings([ranking(0.8, 0.6), ranking(0.7, 0.5)], warn=False)
    result = under_optimization(combined, [0.7, 0.74, np.float32(0.72)])
    assert result.best_unimodal_score == pytest.approx(0.75)
    assert result.fused_score == pytest.approx(0.72) and result.under_optimized
    assert under_optimization(combined, np.array(0.76)).fused_score == pytest.approx(0.76)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"fused_score": "0.7"}, TypeError, "fused_score must be a number or a list of numbers"),
        ({"fused_score": []}, ValueError, "fused_score is empty"),
        ({"fused_score": float("nan")}, ValueError, "fused_score must be finite"),
        ({"fused_score": [0.7, True]}, TypeError, "fused_score entry must be a number, got bool"),
        ({"fused_score": 0.7, "tolerance": -0.1}, ValueError, "tolerance must be a finite number >= 0"),
        ({"fused_score": 0.7, "metric": "macro_f1"}, ValueError, "in metric 'macro_f1' but the ranking's"),
    ],
)
def test_bad_input_is_named(arguments: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        under_optimization(ranking(), **arguments)  # type: ignore[arg-type]


def test_needs_a_ranking() -> None:
    with pytest.raises(TypeError, match=r"needs a pdmp\.Ranking, got dict"):
        under_optimization({"audio": 0.8}, 0.7)  # type: ignore[arg-type]


def test_training_seeds() -> None:
    assert check_training_seeds() == (0,)
    assert check_training_seeds(seed=3) == (3,)
    assert check_training_seeds(seeds=[0, np.int64(1), 2]) == (0, 1, 2)
    assert all(type(seed) is int for seed in check_training_seeds(seeds=[np.int64(1)]))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"seeds": ()}, ValueError, "seeds is empty"),
        ({"seeds": (0, 1, 0)}, ValueError, r"seeds \[0, 1, 0\] repeat \[0\]"),
        ({"seeds": 3}, TypeError, "seeds must be a list of integers such as"),
        ({"seeds": "012"}, TypeError, "seeds must be a list of integers such as"),
        ({"seeds": (0, -1)}, ValueError, "seeds entry -1 must be an integer >= 0"),
        ({"seeds": (0, 1.5)}, ValueError, "seeds entry 1.5 must be an integer >= 0"),
        ({"seed": 1, "seeds": (0, 1)}, ValueError, "pass seed=1 or seeds=.*not both"),
        ({"seed": -2}, ValueError, "seed must be an integer >= 0"),
    ],
)
def test_bad_training_seeds_are_named(arguments: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_training_seeds(**arguments)


def test_lr_may_be_left_to_the_optimizer_factory_only_when_allowed() -> None:
    both = {"a": 1, "b": 2}
    request = {"epochs": 1, "subset": 1.0, "batch_size": 8}
    assert check_unimodal_request(both, both, both, **request, lr=None, lr_optional=True)[0] == ("a", "b")
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got None"):
        check_unimodal_request(both, both, both, **request, lr=None)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        check_unimodal_request(both, both, both, **request, lr=-1, lr_optional=True)
