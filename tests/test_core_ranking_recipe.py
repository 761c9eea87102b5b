"""The core pieces both adapters' rank_unimodal share: per-seed ranking + combination, optimizer factories."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pdmp import RankingWarning, TrainingCurve, UnimodalReport
from pdmp.ranking import factory_passes_lr, rank_training_seeds


def logits_for(accuracy: dict[str, float], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Logits whose argmax is right on the first ``accuracy * n`` samples."""
    out = {}
    for name, value in accuracy.items():
        right = round(value * len(labels))
        predicted = np.where(np.arange(len(labels)) < right, labels, (labels + 1) % 3)
        out[name] = np.eye(3)[predicted]
    return out


LABELS = np.arange(20) % 3


def test_one_seed_is_its_own_ranking_with_a_seed_field() -> None:
    ranking, per_seed = rank_training_seeds(
        {4: logits_for({"a": 0.9, "b": 0.5}, LABELS)}, {"a": LABELS, "b": LABELS}, budget={"epochs": 1}, several=False
    )
    assert per_seed == {4: ranking} and ranking.budget == {"epochs": 1, "seed": 4} and ranking.seed_scores is None


def test_several_seeds_combine_and_warn_once_when_they_disagree() -> None:
    logits = {0: logits_for({"a": 0.9, "b": 0.5}, LABELS), 1: logits_for({"a": 0.4, "b": 0.6}, LABELS)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranking, per_seed = rank_training_seeds(
            logits, {"a": LABELS, "b": LABELS}, budget={"epochs": 1}, several=True, warn_margin=0.0
        )
    assert [str(w.message) for w in caught if issubclass(w.category, RankingWarning)] == [
        "'a' is on top for 50% of the 2 training seeds only; the dominant modality is uncertain"
    ]
    assert per_seed[1].budget["seeds"] == [0, 1] and ranking.budget["training_seeds"] == 2
    assert ranking.seed_scores == {"a": [0.9, 0.4], "b": [0.5, 0.6]} and ranking.dominant == "a"


def test_factory_passes_lr_reads_the_signature() -> None:
    assert factory_passes_lr(lambda lr: None, 0.1, position=0) is True
    assert factory_passes_lr(lambda: None, 0.1, position=0) is False
    assert factory_passes_lr(lambda params, lr=0.1: None, None, position=1) is False
    assert factory_passes_lr(lambda params, lr: None, 0.1, position=1) is True
    with pytest.raises(ValueError, match="takes a learning rate \\('lr'\\): pass lr="):
        factory_passes_lr(lambda lr: None, None, position=0)


def test_the_report_types_are_the_cores() -> None:
    curve = TrainingCurve((1.0,), (0.5,), (1.1,), (0.4,), (0.1,))
    assert curve.lr == (0.1,) and UnimodalReport.__module__ == "pdmp.ranking"
