"""rank_unimodal: unimodal training on a budget, ranked by the core, budget recorded."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import Ranking  # noqa: E402
from pdmp.backends.torch import rank_unimodal  # noqa: E402

torch.set_num_threads(1)


def dataset(n: int, seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    strong = rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]  # classes well separated
    weak = rng.normal(size=(n, 4)) + 0.3 * np.eye(3, 4)[y]  # barely informative
    return {"strong": (strong, y), "weak": (weak, y)}, y


FACTORIES = {"strong": lambda: nn.Linear(4, 3), "weak": lambda: nn.Linear(4, 3)}


def rank(**options: object) -> Ranking:
    train, _ = dataset(240, seed=0)
    val, _ = dataset(120, seed=1)
    settings = {"epochs": 2, "subset": 0.5, "lr": 0.1, "batch_size": 32, "seed": 0, "progress": False} | options
    return rank_unimodal(FACTORIES, train, val, **settings)  # type: ignore[arg-type]


def test_ranks_the_informative_modality_first_and_records_the_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ranking = rank(n_bootstrap=20)
    assert ranking.dominant == "strong" and ranking.scores["strong"] > 0.8 > ranking.scores["weak"]
    assert ranking.stability == 1.0  # paired validation sets: the core bootstrapped them
    assert ranking.budget == {
        "backend": "torch",
        "epochs": 2,
        "subset": 0.5,
        "train_samples": {"strong": 120, "weak": 120},
        "batch_size": 32,
        "lr": 0.1,
        "optimizer": "sgd",
        "seed": 0,
    }
    assert Ranking.load(ranking.save(tmp_path / "ranking.json")).budget == ranking.budget


def test_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert rank().scores == rank().scores
    assert torch.equal(torch.get_rng_state(), before)


def test_accepts_tensors_unpaired_validation_and_optimizer_callables() -> None:
    train, _ = dataset(90, seed=0)
    val, _ = dataset(60, seed=1)
    val["weak"] = (val["weak"][0][:30], val["weak"][1][:30])  # different validation sets: scores path
    tensors = {k: (torch.as_tensor(x), torch.as_tensor(y)) for k, (x, y) in train.items()}

    def adam(params):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(params, lr=0.05)

    ranking = rank_unimodal(FACTORIES, tensors, val, epochs=1, lr=0.05, optimizer=adam, batch_size=16, progress=False)
    assert ranking.dominant == "strong" and ranking.budget["optimizer"] == "adam"
    with pytest.raises(ValueError, match="n_bootstrap needs paired validation sets"):
        rank_unimodal(FACTORIES, tensors, val, epochs=1, lr=0.05, n_bootstrap=5, progress=False)


def test_shows_a_progress_bar_per_modality(capsys) -> None:  # type: ignore[no-untyped-def]
    rank(progress=True, epochs=1)
    err = capsys.readouterr().err
    assert "rank strong (1/2)" in err and "rank weak (2/2)" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val": "typo"}, r"rank_unimodal val: unknown modality\(ies\) \['wekk'\]"),
        ({"subset": 0.0}, r"subset must be a fraction in \(0, 1\]"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; known: sgd, adam, adamw"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"train": "short-labels"}, r"y must be 1-D, one label per row of X"),
    ],
)
def test_bad_input_is_named(change: dict[str, object], message: str) -> None:
    train, _ = dataset(30, seed=0)
    val, _ = dataset(30, seed=1)
    if change.pop("val", None):
        val["wekk"] = val.pop("weak")
    if change.pop("train", None):
        train["weak"] = (train["weak"][0], train["weak"][1][:-1])
    settings = {"epochs": 1, "lr": 0.1, "progress": False} | change
    with pytest.raises(ValueError, match=message):
        rank_unimodal(FACTORIES, train, val, **settings)  # type: ignore[arg-type]


def test_dropout_draws_depend_on_the_seed_only_not_on_the_global_rng() -> None:
    def dropout_model() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    factories = {"strong": dropout_model, "weak": dropout_model}
    train, _ = dataset(120, seed=0)
    val, _ = dataset(60, seed=1)
    scores = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        ranking = rank_unimodal(factories, train, val, epochs=2, lr=0.1, batch_size=16, seed=0, progress=False)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG was not consumed
        scores.append(ranking.scores)
    assert scores[0] == scores[1]
    # ... and the seed does matter (dropout masks and initialisation change with it).
    other = rank_unimodal(factories, train, val, epochs=2, lr=0.1, batch_size=16, seed=1, progress=False)
    assert other.scores != scores[0]


def test_a_callable_metric_works_with_unpaired_validation_sets() -> None:
    """The callable itself reaches the core's scoring, not its name (which it could not resolve)."""
    train, _ = dataset(90, seed=0)
    val, _ = dataset(60, seed=1)
    val["weak"] = (val["weak"][0][:30], val["weak"][1][:30])  # unpaired: ranked by scores

    def error_rate_complement(labels: np.ndarray, predicted: np.ndarray) -> float:
        return float(np.mean(labels == predicted))

    ranking = rank_unimodal(
        FACTORIES, train, val, epochs=1, lr=0.1, batch_size=16, metric=error_rate_complement, progress=False
    )
    assert ranking.metric == "error_rate_complement" and ranking.dominant == "strong"
    accuracy = rank_unimodal(FACTORIES, train, val, epochs=1, lr=0.1, batch_size=16, progress=False)
    assert ranking.scores == accuracy.scores  # the same function as "accuracy", so the same scores
