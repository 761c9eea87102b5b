"""Ranking protocol: ordering, ties, bootstrap, JSON round-trip, and bad input."""

from __future__ import annotations

import json
import math
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
    assert first.stability == pytest.approx(_expected_stability({"s": strong, "c": close}, labels, 200, 1, "s"))
    assert first.n_bootstrap == 200 and first.seed == 1


def _expected_stability(predictions, labels, n_bootstrap: int, seed: int, dominant: str) -> float:
    """The documented protocol, written independently: paired resamples, a top tie split 1/k."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(n_bootstrap):
        index = rng.integers(0, labels.size, size=labels.size)
        correct = {name: int(np.sum(p[index] == labels[index])) for name, p in predictions.items()}
        best = max(correct.values())
        winners = [name for name, value in correct.items() if value == best]
        total += (dominant in winners) / len(winners)
    return total / n_bootstrap


def test_bootstrap_stability_matches_an_independent_computation_and_a_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=300)
    strong = np.where(rng.random(300) < 0.80, labels, (labels + 1) % 3)
    close = np.where(rng.random(300) < 0.76, labels, (labels + 2) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)
        ranking = rank_modalities({"s": strong, "c": close}, labels, n_bootstrap=400, seed=5)
    expected = _expected_stability({"s": strong, "c": close}, labels, 400, 5, "s")
    assert ranking.stability == pytest.approx(expected, abs=1e-12)
    # Normal approximation of P(mean paired difference > 0) over resamples, independent of the RNG.
    difference = (strong == labels).astype(float) - (close == labels).astype(float)
    z = difference.mean() / (difference.std() / np.sqrt(labels.size))
    approximate = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    assert ranking.stability == pytest.approx(approximate, abs=0.06)


def test_bootstrap_ties_are_shared_not_won_by_name() -> None:
    # Regression: ties inside a resample went to the alphabetically first name and counted as
    # "stays on top", so identical predictions got stability 1.0.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=40)
    same = np.where(rng.random(40) < 0.7, labels, (labels + 1) % 3)
    for names in (("audio", "image"), ("zeta", "alpha")):
        with pytest.warns(RankingWarning):
            ranking = rank_modalities(dict.fromkeys(names, same), labels, n_bootstrap=50, seed=0)
        assert ranking.stability == 0.5, names


def test_bootstrap_stability_does_not_depend_on_modality_names() -> None:
    # Regression: the same data gave a high or a low stability depending on which name sorted first,
    # because resamples in which the two tie were won by the alphabetically first name.
    labels = np.tile([0, 1, 2], 7)[:20]
    first = _predictions(13, labels)  # right on samples 0..12
    second = np.where(np.arange(20) >= 8, labels, (labels + 2) % 3)  # right on samples 8..19: 12
    expected = _expected_stability({"f": first, "s": second}, labels, 200, 2, "f")
    for a, b in (("a", "b"), ("b", "a"), ("x", "m"), ("m", "x")):
        with pytest.warns(RankingWarning):
            ranking = rank_modalities({a: first, b: second}, labels, n_bootstrap=200, seed=2, warn_margin=0.1)
        assert ranking.dominant == a
        assert ranking.stability == pytest.approx(expected, abs=1e-12), (a, b)


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


def test_rank_unimodal_outputs_unpaired_with_a_callable_metric() -> None:
    # Regression: the unpaired path passed the metric's *name* on, which failed as "unknown metric".
    from pdmp.ranking import rank_unimodal_outputs

    def errors_negated(y: np.ndarray, p: np.ndarray) -> float:
        return -float(np.sum(y != p))

    eye = np.eye(3)
    short = LABELS[:4]
    ranking = rank_unimodal_outputs(
        {"a": eye[_predictions(9)], "b": eye[_predictions(1, short)]},
        {"a": LABELS, "b": short},
        budget={},
        metric=errors_negated,
    )
    assert ranking.metric == "errors_negated"
    assert ranking.scores == {"a": -1.0, "b": -3.0}


def test_check_unimodal_request_checks_ranking_options_before_training() -> None:
    from pdmp.ranking import check_unimodal_request

    request = {"epochs": 1, "subset": 1.0, "batch_size": 8, "lr": 0.1}
    both = {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        check_unimodal_request(both, both, both, **request, metric="auc")
    with pytest.raises(ValueError, match=r"n_bootstrap must be an integer >= 0, got 2\.5"):
        check_unimodal_request(both, both, both, **request, n_bootstrap=2.5)
    with pytest.raises(ValueError, match="subset must be a fraction"):
        check_unimodal_request(both, both, both, **{**request, "subset": True})


def test_ranking_accepts_numpy_scalars_and_normalises_them(tmp_path) -> None:
    # Regression: np.float32 scores were refused as "not finite"; a numpy integer seed failed only at save().
    ranking = Ranking(
        order=("a", "b"),
        scores={"a": np.float32(0.75), "b": np.float64(0.5)},
        stability=np.float32(0.5),
        n_bootstrap=np.int64(10),
        seed=np.int64(3),
    )
    assert ranking.scores == {"a": 0.75, "b": 0.5} and type(ranking.scores["a"]) is float
    assert type(ranking.seed) is int and type(ranking.n_bootstrap) is int and type(ranking.stability) is float
    assert Ranking.load(ranking.save(tmp_path / "r.json")) == ranking
    ranked = rank_modalities({"a": _predictions(9), "b": _predictions(5)}, LABELS, n_bootstrap=5, seed=np.int32(4))
    assert type(ranked.seed) is int
    assert Ranking.load(ranked.save(tmp_path / "s.json")) == ranked


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", 1.5, "'seed' must be an integer >= 0"),
        ("seed", -3, "'seed' must be an integer >= 0"),
        ("n_bootstrap", "20", "'n_bootstrap' must be an integer >= 0"),
        ("stability", 1.5, r"'stability' must be in \[0, 1\]"),
        ("stability", None, "a stability exists exactly when n_bootstrap > 0"),
        ("scores", {"audio": "0.9", "image": 0.6}, "score of 'audio' is '0.9'"),
        ("scores", {"audio": True, "image": 0.6}, "score of 'audio' is True"),
        ("order", "audioimage", "field 'order' must be a list of names"),
        ("metric", 3, "field 'metric' must be a string"),
        ("metric", "", "'metric' must be a non-empty metric name"),
        ("budget", [1, 2], "'budget'"),
        ("margin", 0.5, "field 'margin' is 0.5 but the scores give"),
        ("extra", 1, r"unknown field\(s\) \['extra'\]"),
    ],
)
def test_altered_ranking_file_names_the_file_and_the_field(tmp_path, field, value, message) -> None:
    ranking = rank_modalities(
        {"audio": _predictions(9), "image": _predictions(6)}, LABELS, n_bootstrap=20, budget={"epochs": 3}
    )
    path = ranking.save(tmp_path / "ranking.json")
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(RankingFileError, match=r"ranking\.json") as caught:
        Ranking.load(path)
    assert caught.match(message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x81\x82 not text", "not UTF-8"),
        (b'{"schema": "pdmp.ranking", "schema": "pdmp.ranking"}', r"duplicate field\(s\) \['schema'\]"),
        (b'{"schema": "pdmp.ranking", "schema_version": 1, "stability": Infinity}', "non-finite number Infinity"),
    ],
)
def test_unreadable_ranking_bytes_raise_ranking_file_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "ranking.json"
    path.write_bytes(content)
    with pytest.raises(RankingFileError, match=message):
        Ranking.load(path)
    with pytest.raises(RankingFileError, match="cannot be read"):
        Ranking.load(tmp_path)  # a folder, not a file


def test_labels_at_or_above_the_number_of_classes_are_refused() -> None:
    # Regression: such labels were scored as misses.
    logits = {"a": np.eye(3)[[0, 1, 2, 0]], "b": np.eye(3)[[0, 1, 1, 0]]}
    with pytest.raises(ValueError, match="class index 3 but there are 3 classes"):
        rank_modalities(logits, [0, 1, 3, 0])
    with pytest.raises(ValueError, match="class index 2 but there are 2 classes"):
        rank_modalities({"a": [0, 1, 2], "b": [0, 1, 1]}, [0, 1, 1], num_classes=2)
    with pytest.raises(ValueError, match="score columns"):
        rank_modalities({"a": np.eye(3), "b": np.eye(4)[:3]}, [0, 1, 2])
