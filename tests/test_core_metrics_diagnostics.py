"""Metrics against scikit-learn, dependency diagnostics, and the NumPy-only import guarantee."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from pdmp import accuracy, dependency, macro_f1, modality_scores, softmax

label_lists = st.lists(st.integers(0, 6), min_size=1, max_size=60)


@settings(max_examples=100, deadline=None)
@given(label_lists, st.randoms(use_true_random=False))
def test_metrics_match_sklearn(labels, rnd) -> None:
    predictions = [rnd.randint(0, 6) for _ in labels]
    assert accuracy(labels, predictions) == pytest.approx(accuracy_score(labels, predictions))
    expected = f1_score(labels, predictions, average="macro", zero_division=0)
    assert macro_f1(labels, predictions) == pytest.approx(expected)


def test_metrics_accept_scores_and_reject_bad_input() -> None:
    assert accuracy([0, 1], [[2.0, 1.0], [0.0, 3.0]]) == 1.0
    with pytest.raises(ValueError, match="mismatched lengths"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="zero samples"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="integer class indices"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        accuracy([0], [[np.inf, 0.0]])


def test_softmax_is_stable() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    assert probabilities == pytest.approx(np.array([[0.5, 0.5, 0.0]]))


def test_dependency_mass_and_share() -> None:
    labels = np.array([0, 1])
    confident = np.array([[10.0, -10.0], [-10.0, 10.0]])
    unsure = np.zeros((2, 2))
    result = dependency({"audio": confident, "image": unsure}, labels)
    assert result.mass["audio"] == pytest.approx(1.0, abs=1e-8)
    assert result.mass["image"] == pytest.approx(0.5)
    assert result.share["audio"] == pytest.approx(1 / 1.5)
    assert sum(result.share.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))}, [0, 3], "class index 3 but there are 3 classes"),
        ({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}, [0, 1], "has 3 samples but labels has 2"),
        ({"a": np.full((1, 2), np.nan), "b": np.zeros((1, 2))}, [0], "non-finite"),
        ({"a": np.zeros(3), "b": np.zeros(3)}, [0, 1, 2], "must be 2-D"),
        ({"a": np.zeros((1, 2))}, [0], "at least two modalities"),
    ],
)
def test_scores_reject_bad_input(logits, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        modality_scores(logits, labels)


def test_import_pdmp_imports_no_framework() -> None:
    code = (
        "import sys, pdmp, pdmp.backends; "
        "loaded = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'torchaudio') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        # Regression: num_classes smaller than the labels gave a number.
        (lambda: macro_f1([0, 1, 2], [0, 1, 2], num_classes=2), ValueError, "class index 2 but there are 2 classes"),
        (lambda: macro_f1([0, 1, 1], [0, 1, 2], num_classes=2), ValueError, "predictions contains class index 2"),
        (
            lambda: macro_f1([0, 1], np.eye(3)[:2], num_classes=2),
            ValueError,
            "num_classes=2 but the predictions have 3",
        ),
        (lambda: macro_f1([0, 1], [0, 1], num_classes=0), ValueError, "num_classes must be an integer >= 1"),
        (lambda: macro_f1([0, 1], [0, 1], num_classes=2.0), ValueError, "num_classes must be an integer"),
        # Regression: a label at or above the width of the scores was scored as a miss.
        (lambda: accuracy([0, 3], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), ValueError, "class index 3 but there are 3"),
        (lambda: accuracy([True, False], [0, 1]), ValueError, "integer class indices, got dtype bool"),
        (lambda: accuracy(["a", "b"], [0, 1]), ValueError, "integer class indices, got dtype <U1"),
        (lambda: accuracy([0, 1], [[0.5], [0.2, 0.8]]), ValueError, "not a rectangular array"),
        (lambda: accuracy([0, 1], np.zeros((2, 0))), ValueError, "at least one class column"),
        (lambda: accuracy([0, 1], [["x", "y"], ["z", "w"]]), TypeError, "must hold real numbers"),
        (lambda: accuracy([0.0, 1.5], [0, 1]), ValueError, "1.5 at index 1"),
    ],
)
def test_metrics_refuse_out_of_range_and_ill_typed_input(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_macro_f1_with_num_classes_matches_sklearn() -> None:
    labels, predictions = [0, 1, 1, 2], [0, 1, 2, 2]
    expected = f1_score(labels, predictions, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    # sklearn with an explicit label list averages over all listed classes; ours over present ones.
    present = f1_score(labels, predictions, average="macro", zero_division=0)
    assert macro_f1(labels, predictions, num_classes=4) == pytest.approx(present)
    assert expected != present
