"""rank_unimodal: the user's recipe (optimizer, weight decay, LR schedule), training seeds, details.

Every bad argument must fail before any unimodal model trains: a model counts its training-mode
forward passes, and the count must still be 0 after the error.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from ranking_helpers import check_details, check_seeds_that_disagree_warn_once, dataset, ranker

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import RankingWarning  # noqa: E402
from pdmp.backends.torch import rank_unimodal  # noqa: E402

torch.set_num_threads(1)

TRAIN_FORWARDS = {"count": 0}


class Counting(nn.Linear):
    """A linear model that counts its forward passes in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            TRAIN_FORWARDS["count"] += 1
        return super().forward(x)


FACTORIES = {"strong": lambda: Counting(4, 3), "weak": lambda: Counting(4, 3)}
TRAIN, VAL = dataset(240, seed=0), dataset(120, seed=1)
rank = ranker(rank_unimodal, FACTORIES, TRAIN, VAL)


def test_an_optimizer_factory_is_the_recipe_and_lr_is_then_optional() -> None:
    built: list[torch.optim.Optimizer] = []

    def adamw(params: Any) -> torch.optim.Optimizer:
        built.append(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05))
        return built[-1]

    ranking = rank(lr=None, optimizer=adamw)
    assert ranking.dominant == "strong"
    # One optimizer per modality for the checks before training, then one per trained model.
    assert len(built) == 4
    for optimizer in built[2:]:
        assert optimizer.param_groups[0]["weight_decay"] == 0.05
        assert all(optimizer.state[p]["step"] == 8 for p in optimizer.param_groups[0]["params"])  # 2 x 4 steps
    assert ranking.budget | {"train_samples": None} == {
        "backend": "torch",
        "epochs": 2,
        "subset": 0.5,
        "train_samples": None,
        "batch_size": 32,
        "optimizer": "adamw",
        "optimizer_class": "AdamW",
        "lr": 0.01,
        "weight_decay": 0.05,
        "seed": 0,
    }


def test_a_lambda_factory_with_its_own_lr_warns_when_lr_is_given_too() -> None:
    with pytest.warns(UserWarning, match=r"lr=0\.1 is not used: the optimizer factory sets its own learning rate"):
        ranking = rank(optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    assert ranking.budget["lr"] == 0.05 and ranking.budget["optimizer"] == "<lambda>"


def test_the_optimizer_class_itself_is_a_factory() -> None:
    # Its second parameter (lr) has a default: with lr given it is passed, without it the default is used.
    assert rank(optimizer=torch.optim.Adam, lr=0.02).budget["lr"] == 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)  # lr 1e-3 for two epochs hardly trains: a near tie
        assert rank(optimizer=torch.optim.Adam, lr=None).budget["lr"] == 1e-3


def test_weight_decay_reaches_the_named_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params: Any, **options: Any) -> None:
            seen.append(options)
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    ranking = rank(weight_decay=1e-4)
    assert seen and all(options == {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4} for options in seen)
    assert ranking.budget["weight_decay"] == 1e-4 and ranking.budget["optimizer"] == "sgd"


def test_default_adamw_keeps_its_own_weight_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = torch.optim.AdamW

    def spy(params: Any, **options: Any) -> torch.optim.Optimizer:
        optimizer = original(params, **options)
        seen.append(optimizer.param_groups[0]["weight_decay"])
        return optimizer

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    rank(optimizer="adamw")
    assert seen and set(seen) == {0.01}  # backwards compatible: weight_decay=None is AdamW's default


def test_an_epoch_scheduler_steps_once_per_epoch() -> None:
    report = rank(
        epochs=3,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        return_details=True,
    )
    for curve in report.curves[0].values():
        assert curve.lr == pytest.approx((0.1, 0.05, 0.025))
    assert report.ranking.budget["scheduler"] == "<lambda>"
    assert report.ranking.budget["scheduler_class"] == "StepLR"
    assert report.ranking.budget["scheduler_interval"] == "epoch"


def test_a_step_scheduler_steps_after_every_optimizer_step() -> None:
    steps: list[int] = []

    def schedule(opt: torch.optim.Optimizer) -> Any:
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        original = scheduler.step

        def counted(*args: Any, **kwargs: Any) -> None:
            steps.append(1)
            original(*args, **kwargs)

        scheduler.step = counted  # type: ignore[method-assign]
        return scheduler

    report = rank(epochs=2, scheduler=schedule, scheduler_interval="step", return_details=True)
    assert len(steps) == 2 * 2 * 4  # two modalities x two epochs x four batches (120 samples / 32)
    assert report.curves[0]["strong"].lr == pytest.approx((0.1, 0.1 / 5))  # epoch 1 starts after 4 steps


def test_a_plateau_scheduler_gets_the_validation_loss() -> None:
    metrics: list[float] = []

    class Spy(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics_value: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            metrics.append(float(metrics_value))
            super().step(metrics_value, *args, **kwargs)

    report = rank(epochs=2, scheduler=lambda opt: Spy(opt, patience=0), return_details=True)
    expected = [loss for name in ("strong", "weak") for loss in report.curves[0][name].val_loss]
    assert metrics == pytest.approx(expected)
    # Without details the validation pass still runs each epoch for the scheduler: same ranking.
    assert rank(epochs=2, scheduler=lambda opt: Spy(opt, patience=0)).scores == report.ranking.scores


def test_seeds_train_once_per_seed_and_combine() -> None:
    ranking = rank(seed=None, seeds=(0, 1, 2), n_bootstrap=20)
    assert ranking.seed_scores is not None and ranking.seed_agreement == 1.0
    for index, seed in enumerate((0, 1, 2)):
        alone = rank(seed=seed, n_bootstrap=20)
        assert {name: scores[index] for name, scores in ranking.seed_scores.items()} == alone.scores
    assert ranking.scores == pytest.approx({name: float(np.mean(s)) for name, s in ranking.seed_scores.items()})
    assert ranking.stability == 1.0 and ranking.seed == 0
    assert ranking.budget["seeds"] == [0, 1, 2] and ranking.budget["training_seeds"] == 3
    assert "seed" not in ranking.budget
    assert ranking.seed_scores["strong"] != [ranking.seed_scores["strong"][0]] * 3  # the seeds did retrain


def test_seeds_that_disagree_warn_once(tmp_path: Any) -> None:
    check_seeds_that_disagree_warn_once(rank_unimodal, FACTORIES, TRAIN, VAL, tmp_path)


def test_a_single_entry_in_seeds_is_that_seed_with_seed_fields() -> None:
    one = rank(seed=None, seeds=[3])
    assert one.scores == rank(seed=3).scores and one.seed_agreement == 1.0
    assert one.seed_scores == {name: [score] for name, score in one.scores.items()}


def test_seeds_leave_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert rank(seeds=(0, 1), seed=None).scores == rank(seeds=(0, 1), seed=None).scores
    assert torch.equal(torch.get_rng_state(), before)


def test_details_hold_models_logits_and_one_curve_entry_per_epoch() -> None:
    def gives_its_logits(model: nn.Module, x: np.ndarray, logits: np.ndarray) -> None:
        assert not model.training
        with torch.no_grad():
            np.testing.assert_allclose(model(torch.as_tensor(x, dtype=torch.float32)).numpy(), logits, rtol=1e-6)

    check_details(rank, VAL, gives_its_logits)


def test_train_loss_curve_is_the_mean_batch_loss() -> None:
    # One epoch, one batch holding the whole subset: the curve's loss is that batch's loss before the step.
    torch.manual_seed(0)
    report = rank(epochs=1, subset=1.0, batch_size=240, return_details=True)
    x, y = (torch.as_tensor(a) for a in TRAIN["strong"])
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(240, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = FACTORIES["strong"]()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(fresh(x[chosen].float()), y[chosen])
    assert report.curves[0]["strong"].train_loss[0] == pytest.approx(float(loss), rel=1e-5)


def bad_optimizer(params: Any) -> Any:
    return list(params)


def foreign_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


def other_optimizer_scheduler(opt: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.StepLR(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 1)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"optimizer": bad_optimizer}, TypeError, "the optimizer factory returned list"),
        ({"optimizer": foreign_optimizer}, ValueError, r"does not optimize the model it was given \(2 parameter"),
        ({"optimizer": 3}, TypeError, "optimizer must be a name or a callable"),
        ({"optimizer": "sgd", "lr": None}, ValueError, "optimizer='sgd' needs a learning rate"),
        ({"optimizer": lambda params, lr: torch.optim.SGD(params, lr), "lr": None}, ValueError, "takes a learning"),
        ({"optimizer": lambda p: torch.optim.SGD(p, 0.1), "weight_decay": 0.1}, ValueError, "goes with a named"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a finite number >= 0"),
        ({"scheduler": "cosine"}, TypeError, "scheduler must be a callable f"),
        ({"scheduler": lambda opt: opt}, TypeError, "the scheduler factory returned SGD"),
        ({"scheduler": other_optimizer_scheduler}, ValueError, "drives another optimizer"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval must be 'epoch' or 'step', got 'batch'"),
        (
            {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau, "scheduler_interval": "step"},
            ValueError,
            "ReduceLROnPlateau steps on the validation loss once per epoch",
        ),
        ({"seeds": ()}, ValueError, "seeds is empty"),
        ({"seeds": (0, 1, 1)}, ValueError, r"seeds \[0, 1, 1\] repeat \[1\]"),
        ({"seeds": 3}, TypeError, "seeds must be a list of integers"),
        ({"seed": 1, "seeds": (0, 1)}, ValueError, "pass seed=1 or seeds=.*not both"),
        ({"factories": {"strong": FACTORIES["strong"], "weak": "linear"}}, TypeError, r"factories\['weak'\] is a str"),
        ({"factories": {"strong": FACTORIES["strong"], "weak": lambda: 3}}, TypeError, "returned int"),
        ({"factories": {"strong": FACTORIES["strong"], "weak": lambda: Counting(4, 2)}}, ValueError, "outputs 2"),
        ({"return_details": "yes"}, TypeError, "return_details must be True or False"),
        ({"lr": float("inf")}, ValueError, "lr must be a finite number > 0"),
        ({"n_bootstrap": 5, "val": "unpaired"}, ValueError, "n_bootstrap needs paired validation sets"),
    ],
)
def test_bad_arguments_fail_before_any_model_trains(
    change: dict[str, Any], error: type[Exception], message: str
) -> None:
    TRAIN_FORWARDS["count"] = 0
    with pytest.raises(error, match=message):
        rank(**change)
    assert TRAIN_FORWARDS["count"] == 0
