"""The benchmark's statistics and method definitions (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.protocol import Method, TrainConfig, is_new_best, modulation_mode, paired_difference, summarise
from pdmp import Ranking


def test_paired_difference_verdicts() -> None:
    better = paired_difference([0.80, 0.82, 0.85, 0.81], [0.70, 0.71, 0.74, 0.72])
    assert better["verdict"] == "better" and better["ci95"][0] > 0
    assert better["mean"] == pytest.approx(0.1025)
    mixed = paired_difference([0.80, 0.70, 0.75], [0.75, 0.75, 0.75])
    assert mixed["verdict"] == "no significant difference"
    assert mixed["ci95"][0] < 0 < mixed["ci95"][1]
    assert paired_difference([0.9, 0.8], [0.1, 0.2])["verdict"] == "too few seeds"


def test_methods_build_the_policies_they_name() -> None:
    ranking = Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.5})
    assert Method("s", "symmetric", {"gamma_p": 4.0}).policy(ranking, 10).coefficients() == {"audio": 4.0, "image": 4.0}
    inverse = Method("i", "inverse", {"gamma_p": 10.0, "gamma_r": 0.5}).policy(ranking, 10)
    assert inverse.coefficients() == {"audio": 0.5, "image": 10.0}
    assert Method("o", "ogmge", {"alpha": 0.3}).policy(ranking, 7).get_config()["end_epoch"] == 7
    with pytest.raises(ValueError, match="unknown method kind"):
        Method("x", "magic").policy(ranking, 1)


def test_best_epoch_is_the_earliest_maximum_of_validation_accuracy() -> None:
    history = [{"val": {"acc": a}} for a in (0.5, 0.7, 0.7, 0.6)]
    assert [is_new_best(history[: e + 1]) for e in range(4)] == [True, True, False, False]
    summary = summarise(history, 0.0, np.zeros(1), final_test={"acc": 0.1}, best_test={"acc": 0.2})
    assert summary["best_val"] == {"epoch": 1, "val": {"acc": 0.7}, "test": {"acc": 0.2}}
    assert summary["final"]["epoch"] == 3 and summary["final"]["test"] == {"acc": 0.1}


def test_modulation_mode_follows_the_optimizer() -> None:
    ranking = Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.5})
    pdmp, ogm = Method("p", "pdmp").policy(ranking, 4), Method("o", "ogmge").policy(ranking, 4)
    assert modulation_mode(TrainConfig(optimizer="adamw"), pdmp) == "lr"
    assert modulation_mode(TrainConfig(optimizer="adamw"), ogm) == "grad"  # its noise is a gradient term
    assert modulation_mode(TrainConfig(optimizer="sgd"), pdmp) == "grad"
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam")
