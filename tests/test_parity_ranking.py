"""Same predictions, same ranking file: ``rank_unimodal`` in torch and in Keras.

Both helpers train models, and their training loops differ on purpose (subset sampling and shuffling
use each framework's RNG), so "the same unimodal predictions" is arranged by construction: each
modality's unimodal model is a linear classifier with fixed NumPy weights, loaded into both
frameworks, and trained with a learning rate (1e-30) far too small to move a float32 weight. The
helpers' whole path from there on (evaluation in batches, logits to float64, pairing detection, the
budget record, the core's ranking and bootstrap, the JSON) must then give the same file.

Canonical form: the file minus ``budget["backend"]`` (``"torch"`` or ``"keras"``, which records
where the ranking came from). Everything else, including the budget's epochs, subset, sample counts,
batch size, learning rate, optimizer name and seed, is byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()
keras = pytest.importorskip("keras")

from pdmp import Ranking  # noqa: E402
from pdmp.backends import keras as pdmp_keras  # noqa: E402
from pdmp.backends import torch as pdmp_torch  # noqa: E402

CLASSES = 4
FROZEN_LR = 1e-30  # lr * gradient is below half an ulp of every weight: nothing moves
WIDTHS = {"audio": 6, "image": 5, "text": 7}
STRENGTH = {"audio": 1.2, "image": 0.5, "text": 0.8}  # how well each fixed classifier separates the classes


def canonical(text: str) -> str:
    """A ranking file without ``budget.backend``, re-serialised exactly as ``Ranking.to_json`` does."""
    data = json.loads(text)
    data["budget"].pop("backend")
    return json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n"


def fixed_weights(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier (kernel ``(in, classes)``, bias) that reads the class from the first features."""
    rng = np.random.default_rng(len(name))
    kernel = 0.3 * rng.normal(size=(WIDTHS[name], CLASSES)) + np.eye(WIDTHS[name], CLASSES)
    return kernel.astype(np.float32), (0.05 * rng.normal(size=CLASSES)).astype(np.float32)


def dataset(names: list[str], n: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    return {
        name: (
            (rng.normal(size=(n, WIDTHS[name])) + STRENGTH[name] * np.eye(CLASSES, WIDTHS[name])[y]).astype(np.float32),
            y,
        )
        for name in names
    }


def torch_factory(name: str) -> Any:
    def make() -> Any:
        model = torch.nn.Linear(WIDTHS[name], CLASSES)
        kernel, bias = fixed_weights(name)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(kernel.T.copy()))
            model.bias.copy_(torch.from_numpy(bias))
        return model

    return make


def keras_factory(name: str) -> Any:
    def make() -> Any:
        model = keras.Sequential([keras.Input((WIDTHS[name],)), keras.layers.Dense(CLASSES)])
        model.layers[-1].set_weights(list(fixed_weights(name)))
        return model

    return make


def torch_sgd(params: Any, lr: float) -> Any:
    return torch.optim.SGD(params, lr=lr)


def keras_sgd(lr: float) -> Any:
    return keras.optimizers.SGD(lr)


# One name for both, so both budgets record the same optimizer (the helpers store ``__name__``).
torch_sgd.__name__ = keras_sgd.__name__ = "frozen_sgd"


CASES = {
    "paired-bootstrap": {"names": ["audio", "image"], "paired": True, "n_bootstrap": 100, "metric": "accuracy"},
    "paired-three-macro-f1": {
        "names": ["image", "audio", "text"],
        "paired": True,
        "n_bootstrap": 50,
        "metric": "macro_f1",
    },
    "unpaired-scores": {"names": ["text", "image"], "paired": False, "n_bootstrap": 0, "metric": "accuracy"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_predictions_give_the_same_ranking_file(case: str, tmp_path: Path) -> None:
    options = CASES[case]
    names: list[str] = options["names"]
    train = dataset(names, 40, seed=0)
    val = dataset(names, 90, seed=1)
    if not options["paired"]:  # different samples per modality: the helpers rank from scores
        val = {name: (x[3 * i :], y[3 * i :]) for i, (name, (x, y)) in enumerate(val.items())}
    common = {
        "epochs": 2,
        "subset": 0.5,
        "lr": FROZEN_LR,
        "batch_size": 16,
        "seed": 3,
        "metric": options["metric"],
        "n_bootstrap": options["n_bootstrap"],
        "progress": False,
        "warn_margin": 0.0,  # close scores are fine here: the point is that both files agree
    }
    rankings: dict[str, Ranking] = {
        "torch": pdmp_torch.rank_unimodal(
            {n: torch_factory(n) for n in names}, train, val, optimizer=torch_sgd, **common
        ),
        "keras": pdmp_keras.rank_unimodal(
            {n: keras_factory(n) for n in names}, train, val, optimizer=keras_sgd, **common
        ),
    }
    files = {}
    for backend, ranking in rankings.items():
        assert ranking.budget["backend"] == backend
        files[backend] = ranking.save(tmp_path / f"{backend}.json").read_text(encoding="utf-8")
    # The premise: both saw the same predictions, i.e. the fixed classifiers' own scores.
    for name in names:
        kernel, bias = fixed_weights(name)
        x, y = val[name]
        predicted = (x.astype(np.float64) @ kernel + bias).argmax(axis=1)
        accuracy = float(np.mean(predicted == y))
        if options["metric"] == "accuracy":
            assert rankings["torch"].scores[name] == accuracy, name
    assert len(set(rankings["torch"].scores.values())) == len(names), "scores should differ for a clear order"
    assert canonical(files["torch"]) == canonical(files["keras"]), (files["torch"], files["keras"])
    assert Ranking.load(tmp_path / "torch.json").order == Ranking.load(tmp_path / "keras.json").order
    if options["n_bootstrap"]:
        assert rankings["torch"].stability is not None
