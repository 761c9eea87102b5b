"""Keras rank_unimodal: the user's recipe (optimizer factory, schedule, weight decay), training seeds, details.

Every bad argument must fail before any unimodal model trains: the models count their training-mode
calls (``fit()`` traces the model with ``training=True`` before its first step), and the count must
still be 0 after the error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from keras_helpers import keras
from ranking_helpers import check_details, check_seeds_that_disagree_warn_once, dataset, ranker

from pdmp.backends.keras import rank_unimodal

pytestmark = pytest.mark.keras

TRAINING_CALLS = {"count": 0}


class Counting(keras.layers.Dense):
    """A dense layer that counts its calls in training mode (at trace time inside ``fit()``)."""

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training:
            TRAINING_CALLS["count"] += 1
        return super().call(inputs)


def linear(classes: int = 3) -> keras.Model:
    return keras.Sequential([keras.Input((4,)), Counting(classes)])


FACTORIES = {"strong": linear, "weak": linear}
TRAIN, VAL = dataset(160, seed=0, dtype="float32"), dataset(80, seed=1, dtype="float32")
rank = ranker(rank_unimodal, FACTORIES, TRAIN, VAL)


def test_an_optimizer_factory_is_the_recipe_and_lr_is_then_optional() -> None:
    def adamw() -> keras.optimizers.Optimizer:
        return keras.optimizers.AdamW(0.1, weight_decay=0.05)

    report = rank(optimizer=adamw, lr=None, return_details=True)
    assert report.ranking.dominant == "strong"
    budget = report.ranking.budget
    assert budget["optimizer"] == "adamw" and budget["optimizer_class"] == "AdamW"
    assert budget["lr"] == pytest.approx(0.1) and budget["weight_decay"] == pytest.approx(0.05)
    optimizers = [model.optimizer for model in report.models[0].values()]
    assert all(isinstance(opt, keras.optimizers.AdamW) for opt in optimizers) and optimizers[0] is not optimizers[1]
    # f(lr) gets lr=.
    taken = rank(optimizer=lambda lr: keras.optimizers.Adam(lr), lr=0.02, return_details=True)
    assert taken.curves[0]["strong"].lr == pytest.approx((0.02, 0.02))


def test_a_factory_with_its_own_lr_warns_when_lr_is_given_too() -> None:
    with pytest.warns(UserWarning, match=r"lr=0\.1 is not used: the optimizer factory sets its own"):
        rank(optimizer=lambda: keras.optimizers.SGD(0.05))


def test_a_learning_rate_schedule_in_the_factory_is_the_scheduler() -> None:
    steps_per_epoch = math.ceil(80 / 32)  # subset 0.5 of 160 samples, batches of 32
    schedule = lambda: keras.optimizers.schedules.ExponentialDecay(0.1, steps_per_epoch, 0.5, staircase=True)  # noqa: E731
    report = rank(optimizer=lambda: keras.optimizers.SGD(schedule()), lr=None, epochs=3, return_details=True)
    assert report.curves[0]["strong"].lr == pytest.approx((0.1, 0.05, 0.025))  # halved every epoch
    assert report.ranking.budget["lr_schedule"] == "ExponentialDecay" and report.ranking.budget["lr"] == 0.1


def test_weight_decay_reaches_the_named_optimizer() -> None:
    report = rank(optimizer="sgd", weight_decay=0.01, return_details=True)
    assert report.ranking.budget["weight_decay"] == 0.01
    assert all(model.optimizer.weight_decay == pytest.approx(0.01) for model in report.models[0].values())
    plain = rank(optimizer="adamw", return_details=True)
    assert "weight_decay" not in plain.ranking.budget  # AdamW keeps Keras's own default
    assert plain.models[0]["strong"].optimizer.weight_decay == pytest.approx(0.004)


def test_seeds_train_once_per_seed_and_combine() -> None:
    ranking = rank(seeds=(0, 1), n_bootstrap=20)
    assert ranking.seed_scores is not None and ranking.seed_agreement == 1.0
    alone = rank(seed=1, n_bootstrap=20)
    assert {name: scores[1] for name, scores in ranking.seed_scores.items()} == alone.scores
    assert ranking.scores == pytest.approx({name: float(np.mean(s)) for name, s in ranking.seed_scores.items()})
    assert ranking.stability == 1.0 and ranking.seed == 0
    assert ranking.budget["seeds"] == [0, 1] and ranking.budget["training_seeds"] == 2
    assert "seed" not in ranking.budget and ranking.budget["backend"] == "keras"
    assert ranking.seed_scores["weak"][0] != ranking.seed_scores["weak"][1]  # the seeds did retrain


def test_seeds_that_disagree_warn_once(tmp_path: Any) -> None:
    check_seeds_that_disagree_warn_once(rank_unimodal, FACTORIES, TRAIN, VAL, tmp_path)


def test_details_hold_models_logits_and_one_curve_entry_per_epoch() -> None:
    def gives_its_logits(model: keras.Model, x: np.ndarray, logits: np.ndarray) -> None:
        np.testing.assert_allclose(model.predict(x, verbose=0), logits)

    check_details(rank, VAL, gives_its_logits)


def same_optimizer_factory() -> Any:
    shared = keras.optimizers.SGD(0.1)
    return lambda: shared


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"optimizer": lambda: [0.1]}, TypeError, "the optimizer factory returned list"),
        ({"optimizer": same_optimizer_factory()}, ValueError, "returned the same optimizer object twice"),
        ({"optimizer": 3}, TypeError, "optimizer must be a name or a callable"),
        ({"optimizer": "lion"}, ValueError, "unknown optimizer 'lion'"),
        ({"optimizer": "sgd", "lr": None}, ValueError, "optimizer='sgd' needs a learning rate"),
        ({"optimizer": lambda lr: keras.optimizers.SGD(lr), "lr": None}, ValueError, "takes a learning rate"),
        ({"optimizer": lambda: keras.optimizers.SGD(0.1), "weight_decay": 0.1}, ValueError, "goes with a named"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number >= 0"),
        ({"seeds": ()}, ValueError, "seeds is empty"),
        ({"seeds": (0, 1, 1)}, ValueError, r"seeds \[0, 1, 1\] repeat \[1\]"),
        ({"seeds": 3}, TypeError, "seeds must be a list of integers"),
        ({"seed": 1, "seeds": (0, 1)}, ValueError, "pass seed=1 or seeds=.*not both"),
        ({"factories": {"strong": linear, "weak": "linear"}}, TypeError, r"factories\['weak'\] is a str"),
        ({"factories": {"strong": linear, "weak": lambda: 3}}, TypeError, "returned int"),
        ({"factories": {"strong": linear, "weak": lambda: linear(2)}}, ValueError, "contains class index 2"),
        ({"return_details": "yes"}, TypeError, "return_details must be True or False"),
        ({"lr": float("inf")}, ValueError, "lr must be a finite number > 0"),
        ({"metric": "auc"}, ValueError, "auc"),
        ({"n_bootstrap": 5, "val": "unpaired"}, ValueError, "n_bootstrap needs paired validation sets"),
    ],
)
def test_bad_arguments_fail_before_any_model_trains(
    change: dict[str, Any], error: type[Exception], message: str
) -> None:
    TRAINING_CALLS["count"] = 0
    with pytest.raises(error, match=message):
        rank(**change)
    assert TRAINING_CALLS["count"] == 0
