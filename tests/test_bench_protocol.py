"""The benchmark's statistics and method definitions (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.protocol import Method, TrainConfig, is_new_best, modulation_mode, summarise
from benchmarks.report import _best_unimodal, _difference, tuning_seeds
from pdmp import Ranking, UniformScaling


def _run(method: str, seed: int, test: float, val: float) -> dict:
    split = {"test": {"acc": test}, "val": {"acc": val}}
    return {"seed": seed, "method": {"name": method}, "final": split, "best_val": split}


def test_report_uses_paired_t_intervals_and_leaves_out_tuning_seeds() -> None:
    group = [_run("pdmp[gp=5]", 100, 0.99, 0.99)]
    group += [_run("pdmp_tuned", seed, 0.80 + 0.01 * seed, 0.8) for seed in (100, 0, 1, 2)]
    group += [_run("joint", seed, 0.70, 0.7) for seed in (100, 0, 1, 2)]
    assert tuning_seeds(group) == {100}
    # Seeds 0-2 only: differences 0.10, 0.11, 0.12 -> mean 11.00 points, t-interval 11 ± 4.303 * 1 / sqrt(3).
    text = _difference(group, "pdmp_tuned", "joint", "final")
    assert text.startswith("+11.00 [+8.52, +13.48] **better**") and "n=3" in text
    assert _difference(group, "pdmp_tuned", "joint", "final") != _difference(group, "joint", "pdmp_tuned", "final")


def test_best_unimodal_is_chosen_on_validation_not_test() -> None:
    group = [_run("unimodal:audio", s, test=0.9, val=0.6) for s in (0, 1)]
    group += [_run("unimodal:image", s, test=0.5, val=0.7) for s in (0, 1)]
    assert _best_unimodal(group, ["unimodal:audio", "unimodal:image"]) == "unimodal:image"


def test_methods_build_the_policies_they_name() -> None:
    ranking = Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.5})
    symmetric = Method("s", "symmetric", {"gamma_p": 4.0}).policy(ranking, 10)
    assert isinstance(symmetric, UniformScaling) and symmetric.coefficients() == {"audio": 4.0, "image": 4.0}
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
