"""Ranking protocol: ordering, ties, bootstrap, JSON round-trip, and bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdmp import Ranking, RankingFileError, RankingWarning, rank_modalities
from pdmp.metrics import macro_f1

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def _predictions(correct: int, labels: np.ndarray = LABELS) -> np.ndarray:
    """Predictions that are right on the first ``correct`` samples and wrong after."""
    wrong = (labels + 1) % 3
    return np.where(np.arange(labels.size) < correct, labels, wrong)


def test_ranks_by_accuracy_and_reports_dominant_and_margin() -> None:
    ranking = rank_modalities({"audio": _predictions(6), "image": _predictions(9)}, LABELS)
    assert ranking.order == ("image", "audio")
    assert ranking.dominant == "image"
    assert ranking.weakest == "audio"
    assert ranking.scores == {"image": 0.9, "audio": 0.6}
    assert ranking.margin == pytest.approx(0.3)
    assert ranking.metric == "accuracy"
    assert ranking.stability is None


def test_accepts_logits_and_takes_argmax() -> None:
    logits = np.eye(3)[_predictions(7)] * 5.0
    ranking = rank_modalities({"a": logits, "b": _predictions(4)}, LABELS)
    assert ranking.scores["a"] == pytest.approx(0.7)


def test_macro_f1_and_callable_metrics() -> None:
    predictions = {"a": _predictions(8), "b": _predictions(5)}
    ranking = rank_modalities(predictions, LABELS, metric="macro_f1")
    assert ranking.metric == "macro_f1"
    assert ranking.scores["a"] == pytest.approx(macro_f1(LABELS, predictions["a"]))

    def errors_negated(y: np.ndarray, p: np.ndarray) -> float:
        return -float(np.sum(y != p))

    custom = rank_modalities(predictions, LABELS, metric=errors_negated)
    assert custom.metric == "errors_negated"
    assert custom.order == ("a", "b")


def test_precomputed_scores() -> None:
    ranking = rank_modalities(scores={"pix": 0.96, "fou": 0.82, "mor": 0.74})
    assert ranking.order == ("pix", "fou", "mor")


def test_ties_are_broken_by_name_and_warn() -> None:
    with pytest.warns(RankingWarning, match="uncertain"):
        ranking = rank_modalities(scores={"video": 0.5, "audio": 0.5})
    assert ranking.order == ("audio", "video")
    with pytest.warns(RankingWarning):
        rank_modalities(scores={"b": 0.50, "a": 0.52}, warn_margin=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_modalities(scores={"b": 0.50, "a": 0.52}, warn_margin=0.01)


def test_bootstrap_stability_is_seeded_and_sensible() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    strong = np.where(rng.random(400) < 0.9, labels, (labels + 1) % 3)
    weak = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 3)
    close = np.where(rng.random(400) < 0.885, labels, (labels + 2) % 3)
    clear = rank_modalities({"s": strong, "w": weak}, labels, n_bootstrap=200, seed=1)
    assert clear.stability == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)
        first = rank_modalities({"s": strong, "c": close}, labels, n_bootstrap=200, seed=1)
        again = rank_modalities({"s": strong, "c": close}, labels, n_bootstrap=200, seed=1)
    assert first.stability == again.stability
    assert first.stability is not None and 0.2 < first.stability < 1.0
    assert first.n_bootstrap == 200 and first.seed == 1


def test_json_round_trip_is_byte_stable(tmp_path) -> None:
    ranking = rank_modalities(
        {"audio": _predictions(6), "image": _predictions(9)}, LABELS, n_bootstrap=20, budget={"epochs": 3}
    )
    path = ranking.save(tmp_path / "ranking.json")
    loaded = Ranking.load(path)
    assert loaded == ranking
    assert loaded.to_json() == path.read_text()
    assert json.loads(path.read_text())["budget"] == {"epochs": 3}
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": "pdmp.ranking", "schema_version": 1, "order": ["a", "b"]', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema": "other"}', "is this a pdmp ranking file"),
        ('{"schema": "pdmp.ranking", "schema_version": 99}', "schema_version 99 is not supported"),
        ('{"schema": "pdmp.ranking", "schema_version": 1, "order": ["a", "b"]}', "missing field"),
        (
            '{"schema": "pdmp.ranking", "schema_version": 1, "metric": "accuracy",'
            ' "order": ["a", "b"], "scores": {"a": 0.1, "b": 0.9}}',
            "disagrees with scores",
        ),
        (
            '{"schema": "pdmp.ranking", "schema_version": 1, "metric": "accuracy",'
            ' "order": ["a", "b"], "scores": {"a": 0.9, "c": 0.1}}',
            "must name the same modalities",
        ),
        (
            '{"schema": "pdmp.ranking", "schema_version": 1, "metric": "accuracy",'
            ' "order": ["a", "b"], "scores": {"a": NaN, "b": 0.1}}',
            "finite",
        ),
    ],
)
def test_corrupt_ranking_files_name_the_problem(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "ranking.json"
    path.write_text(content)
    with pytest.raises(RankingFileError, match=message):
        Ranking.load(path)


def test_missing_ranking_file(tmp_path) -> None:
    with pytest.raises(RankingFileError, match="does not exist"):
        Ranking.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"scores": {"a": 0.9}}, ValueError, "at least two modalities"),
        ({"scores": {"a": 0.9, "": 0.1}}, ValueError, "empty modality name"),
        ({"scores": {"a": float("nan"), "b": 0.1}}, ValueError, "finite"),
        ({"scores": {"a": float("inf"), "b": 0.1}}, ValueError, "finite"),
        ({"predictions": {"a": [0, 1], "b": [0, 1, 1]}, "labels": [0, 1]}, ValueError, "mismatched lengths"),
        ({"predictions": {"a": [0, 1], "b": [0, -1]}, "labels": [0, 1]}, ValueError, "negative class index"),
        ({"predictions": {"a": [[0.1, np.nan]], "b": [0]}, "labels": [0]}, ValueError, "non-finite"),
        ({"predictions": {"a": [0], "b": [0]}}, ValueError, "need labels"),
        ({}, ValueError, "either predictions"),
        ({"scores": {"a": 0.9, "b": 0.1}, "metric": "auc"}, ValueError, "unknown metric 'auc'"),
    ],
)
def test_bad_input_is_named(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        rank_modalities(**kwargs)


def test_duplicate_names_in_ranking_object() -> None:
    with pytest.raises(ValueError, match="duplicate modality name"):
        Ranking(order=("a", "a"), scores={"a": 1.0})


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcdefgh", min_size=1, max_size=4),
        st.floats(min_value=0, max_value=1, allow_nan=False),
        min_size=2,
        max_size=6,
    )
)
def test_ranking_is_a_sorted_permutation(scores: dict[str, float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)
        ranking = rank_modalities(scores=scores)
    assert sorted(ranking.order) == sorted(scores)
    values = [ranking.scores[name] for name in ranking.order]
    assert values == sorted(values, reverse=True)
    assert ranking.margin >= 0
    assert Ranking.from_dict(json.loads(ranking.to_json())) == ranking


def test_rank_unimodal_outputs_paired_and_unpaired() -> None:
    from pdmp.ranking import rank_unimodal_outputs

    eye = np.eye(3)
    paired = rank_unimodal_outputs(
        {"a": eye[_predictions(9)], "b": eye[_predictions(5)]},
        {"a": LABELS, "b": LABELS},
        budget={"epochs": 1},
        n_bootstrap=10,
    )
    assert paired.order == ("a", "b") and paired.stability is not None and paired.budget == {"epochs": 1}
    short = LABELS[:4]
    unpaired = rank_unimodal_outputs(
        {"a": eye[_predictions(9)], "b": eye[_predictions(1, short)]}, {"a": LABELS, "b": short}, budget={}
    )
    assert unpaired.scores == {"a": 0.9, "b": 0.25} and unpaired.stability is None
    with pytest.raises(ValueError, match="n_bootstrap needs paired validation sets"):
        rank_unimodal_outputs({"a": eye[LABELS], "b": eye[short]}, {"a": LABELS, "b": short}, budget={}, n_bootstrap=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"subset": 0.0}, r"subset must be a fraction in \(0, 1\]"),
        ({"subset": 1.5}, r"subset must be a fraction in \(0, 1\]"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"val": {"a": 1, "c": 2}}, r"unknown modality\(ies\) \['c'\]"),
    ],
)
def test_check_unimodal_request_names_the_problem(kwargs, message) -> None:
    from pdmp.ranking import check_unimodal_request

    arguments = {"epochs": 1, "subset": 1.0, "batch_size": 8, "lr": 0.1, "val": {"a": 1, "b": 2}, **kwargs}
    val = arguments.pop("val")
    with pytest.raises(ValueError, match=message):
        check_unimodal_request({"a": 1, "b": 2}, {"a": 1, "b": 2}, val, **arguments)
