"""rank_unimodal for Keras: trains per-modality models with fit() and returns the core's Ranking."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

from pdmp import Ranking  # noqa: E402
from pdmp.backends.keras import rank_unimodal  # noqa: E402

pytestmark = pytest.mark.keras


def split(n: int = 300, seed: int = 0) -> tuple[dict, dict]:
    """'clear' separates the classes, 'noise' carries no information about them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = {
        "clear": (rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]).astype("float32"),
        "noise": rng.normal(size=(n, 4)).astype("float32"),
    }
    cut = 2 * n // 3
    return {k: (v[:cut], y[:cut]) for k, v in x.items()}, {k: (v[cut:], y[cut:]) for k, v in x.items()}


def factory() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


def test_rank_unimodal_finds_the_informative_modality_and_records_its_budget(capsys: pytest.CaptureFixture) -> None:
    train, val = split()
    ranking = rank_unimodal(
        {"clear": factory, "noise": factory}, train, val, epochs=3, subset=0.5, lr=0.05, batch_size=32, n_bootstrap=20
    )
    assert isinstance(ranking, Ranking)
    assert ranking.order == ("clear", "noise") and ranking.scores["clear"] > 0.8 > ranking.scores["noise"] + 0.3
    assert ranking.stability == 1.0
    assert ranking.budget == {
        "backend": "keras",
        "epochs": 3,
        "subset": 0.5,
        "train_samples": {"clear": 100, "noise": 100},
        "batch_size": 32,
        "lr": 0.05,
        "optimizer": "sgd",
        "seed": 0,
    }
    out = capsys.readouterr().out
    assert "rank clear (1/2): 100 samples, 3 epoch(s)" in out and "accuracy" in out  # Keras's progress bar


def test_rank_unimodal_is_reproducible_with_a_seed() -> None:
    train, val = split()
    options = {"epochs": 1, "subset": 0.3, "lr": 0.01, "optimizer": "adam", "progress": False}
    first = rank_unimodal({"clear": factory, "noise": factory}, train, val, **options)
    again = rank_unimodal({"clear": factory, "noise": factory}, train, val, **options)
    assert first == again


def test_rank_unimodal_bad_input_names_the_fix() -> None:
    train, val = split(30)
    factories = {"clear": factory, "noise": factory}
    with pytest.raises(ValueError, match=r"rank_unimodal train: unknown modality\(ies\) \['sound'\]"):
        rank_unimodal(factories, {"sound": train["clear"], "noise": train["noise"]}, val, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"subset must be a fraction in \(0, 1\], got 0"):
        rank_unimodal(factories, train, val, epochs=1, lr=0.1, subset=0)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; known: sgd, adam, adamw"):
        rank_unimodal(factories, train, val, epochs=1, lr=0.1, optimizer="adagrad")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        rank_unimodal(factories, train, val, epochs=0, lr=0.1)
    bad = {**train, "noise": (train["noise"][0][:5], train["noise"][1])}
    with pytest.raises(ValueError, match=r"train\['noise'\]: X has 5 samples but y has 20"):
        rank_unimodal(factories, bad, val, epochs=1, lr=0.1, progress=False)
    with pytest.raises(TypeError, match=r"factories\['noise'\]\(\) returned Dense"):
        rank_unimodal(
            {"clear": factory, "noise": lambda: keras.layers.Dense(3)}, train, val, epochs=1, lr=0.1, progress=False
        )


def test_rank_unimodal_refuses_labels_the_models_cannot_score_before_training(capsys: pytest.CaptureFixture) -> None:
    """A label >= the number of classes would be scored as a miss; it is refused before any model trains."""
    train, val = split(30)
    factories = {"clear": factory, "noise": factory}
    bad_val = {**val, "noise": (val["noise"][0], np.where(np.arange(10) == 4, 3, val["noise"][1]))}
    with pytest.raises(ValueError, match=r"val\['noise'\] labels contains class index 3 but there are 3 classes"):
        rank_unimodal(factories, train, bad_val, epochs=1, lr=0.1, progress=True)
    assert "rank clear" not in capsys.readouterr().out  # not even the first modality trained
    bad_train = {**train, "clear": (train["clear"][0], np.where(np.arange(20) == 0, np.nan, train["clear"][1]))}
    with pytest.raises(ValueError, match=r"train\['clear'\] labels must hold integer class indices"):
        rank_unimodal(factories, bad_train, val, epochs=1, lr=0.1, progress=False)
