"""What the torch and Keras ``rank_unimodal`` test modules share: the data, the call with small
defaults, and the checks that hold alike in both backends (seeds that disagree, the details report).

The backend modules pass in their own ``rank_unimodal``, factories and model check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pdmp import Ranking, RankingWarning, TrainingCurve, UnimodalReport

Data = dict[str, tuple[np.ndarray, np.ndarray]]


def dataset(n: int, seed: int, dtype: str = "float64") -> Data:
    """Paired modalities (the same labels): ``strong`` separates the 3 classes, ``weak`` barely does."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    strong = rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]
    weak = rng.normal(size=(n, 4)) + 0.3 * np.eye(3, 4)[y]
    return {"strong": (strong.astype(dtype), y), "weak": (weak.astype(dtype), y)}


def ranker(
    rank_unimodal: Callable[..., Any], factories: Mapping[str, Any], train: Data, val: Data
) -> Callable[..., Any]:
    """``rank(**options)``: ``rank_unimodal`` for 2 epochs on half the training data, lr 0.1, batches of 32,
    no progress output. ``factories=`` replaces the factories; ``val="unpaired"`` halves the weak modality's
    validation set."""

    def rank(**options: Any) -> Any:
        chosen = options.pop("factories", factories)
        held_out = val
        if options.pop("val", None):
            half = len(val["weak"][1]) // 2
            held_out = {**val, "weak": (val["weak"][0][:half], val["weak"][1][:half])}
        settings = {"epochs": 2, "subset": 0.5, "lr": 0.1, "batch_size": 32, "progress": False} | options
        return rank_unimodal(chosen, train, held_out, **settings)

    return rank


def check_seeds_that_disagree_warn_once(
    rank_unimodal: Callable[..., Any], factories: Mapping[str, Any], train: Data, val: Data, tmp_path: Path
) -> None:
    """Two identical modalities tie on every seed: one RankingWarning for the combination, none per seed."""
    same = {"strong": train["strong"], "weak": train["strong"]}
    same_val = {"strong": val["strong"], "weak": val["strong"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranking = rank_unimodal(
            factories, same, same_val, epochs=1, lr=0.1, seeds=(0, 1), progress=False, warn_margin=0.0
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, RankingWarning)]
    assert len(messages) == 1 and "on top for 50% of the 2 training seeds" in messages[0]
    assert ranking.seed_agreement == 0.5  # identical modalities tie on every seed
    assert Ranking.load(ranking.save(tmp_path / "r.json")) == ranking


def check_details(
    rank: Callable[..., Any], val: Data, check_model: Callable[[Any, np.ndarray, np.ndarray], None]
) -> None:
    """``return_details=True`` over two seeds: the models, logits and one curve entry per epoch, and the same
    ranking as without details. ``check_model(model, x_val, logits)`` checks that a trained model gives its
    reported validation logits."""
    report = rank(epochs=3, seeds=(0, 1), return_details=True, n_bootstrap=10)
    assert isinstance(report, UnimodalReport) and report.seeds == (0, 1)
    assert report.ranking == rank(epochs=3, seeds=(0, 1), n_bootstrap=10)  # the per-epoch validation changes nothing
    assert set(report.rankings) == {0, 1} and report.rankings[1].scores == rank(epochs=3, seed=1).scores
    for seed in (0, 1):
        assert set(report.models[seed]) == set(report.val_logits[seed]) == set(report.curves[seed]) == set(val)
        for name, model in report.models[seed].items():
            check_model(model, val[name][0], report.val_logits[seed][name])
            curve = report.curves[seed][name]
            assert isinstance(curve, TrainingCurve)
            for values in (curve.train_loss, curve.train_accuracy, curve.val_loss, curve.val_accuracy, curve.lr):
                assert len(values) == 3 and all(math.isfinite(v) for v in values)
            predicted = report.val_logits[seed][name].argmax(axis=1)
            assert curve.val_accuracy[-1] == pytest.approx(float(np.mean(predicted == val[name][1])))
            assert curve.val_accuracy[-1] == pytest.approx(report.rankings[seed].scores[name])
            assert all(0.0 <= v <= 1.0 for v in curve.train_accuracy) and curve.lr == pytest.approx((0.1,) * 3)
    np.testing.assert_array_equal(report.val_labels["weak"], val["weak"][1])
    strong = report.curves[0]["strong"]
    assert strong.train_loss[-1] < strong.train_loss[0] and strong.train_accuracy[-1] > 0.8
