"""UME, the unimodal ensemble (NumPy only): the average of the unimodal models' probabilities."""

from __future__ import annotations

import numpy as np
import pytest

import pdmp
from pdmp.ranking import UnimodalReport


def test_mean_of_probabilities_and_of_softmaxed_logits():
    audio = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    image = np.array([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    ensemble = pdmp.unimodal_ensemble({"audio": audio, "image": image})
    np.testing.assert_allclose(ensemble, [[0.4, 0.5, 0.1], [0.15, 0.15, 0.7]])
    logits = {"audio": np.log(audio) + 3.0, "image": np.log(image) - 1.0}  # a shift per row is no change
    np.testing.assert_allclose(pdmp.unimodal_ensemble(logits, inputs="logits"), ensemble)


def test_ensemble_can_beat_each_member():
    # Each model right on a different sample, confident there; unsure elsewhere.
    labels = np.array([0, 1])
    audio = np.array([[0.9, 0.1], [0.6, 0.4]])
    image = np.array([[0.4, 0.6], [0.1, 0.9]])
    assert pdmp.accuracy(labels, audio) == pdmp.accuracy(labels, image) == 0.5
    assert pdmp.accuracy(labels, pdmp.unimodal_ensemble({"audio": audio, "image": image})) == 1.0


def test_weights_and_their_errors():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(pdmp.unimodal_ensemble({"a": a, "b": b}, weights={"a": 3.0, "b": 1.0}), [[0.75, 0.25]])
    with pytest.raises(ValueError, match="one weight per modality"):
        pdmp.unimodal_ensemble({"a": a, "b": b}, weights={"a": 1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        pdmp.unimodal_ensemble({"a": a, "b": b}, weights={"a": 0.0, "b": 0.0})


@pytest.mark.parametrize(
    ("predictions", "match"),
    [
        ({}, "must map each modality"),
        ({"a": np.ones(3) / 3, "b": np.ones(3) / 3}, r"expected \(n_samples, n_classes\)"),
        ({"a": np.array([[2.0, -1.0]]), "b": np.array([[0.5, 0.5]])}, "not probabilities"),
        ({"a": np.array([[1.0, 0.0]])}, "at least two modalities"),
        ({"a": np.full((2, 3), 1 / 3), "b": np.full((3, 3), 1 / 3)}, "differ in shape"),
        ({"a": np.array([[np.nan, 1.0]]), "b": np.array([[0.5, 0.5]])}, "finite"),
    ],
)
def test_bad_input_is_refused_with_the_fix(predictions, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pdmp.unimodal_ensemble(predictions)


def test_bad_inputs_mode():
    with pytest.raises(ValueError, match="'probabilities' or 'logits'"):
        pdmp.unimodal_ensemble({"a": np.full((1, 2), 0.5), "b": np.full((1, 2), 0.5)}, inputs="probs")  # type: ignore[arg-type]


def report(labels_b: np.ndarray) -> UnimodalReport:
    ranking = pdmp.Ranking(order=("a", "b"), scores={"a": 0.9, "b": 0.5})
    logits = {"a": np.array([[2.0, 0.0], [0.0, 1.0]]), "b": np.array([[0.0, 0.0], [0.0, 3.0]])}
    return UnimodalReport(
        ranking=ranking,
        seeds=(7,),
        rankings={7: ranking},
        models={7: {"a": None, "b": None}},
        val_logits={7: logits},
        val_labels={"a": np.array([0, 1]), "b": labels_b},
        curves={7: {}},
    )


def test_report_ensemble_uses_the_ranking_stage_logits():
    got = pdmp.report_ensemble(report(np.array([0, 1])))
    expected = pdmp.unimodal_ensemble(report(np.array([0, 1])).val_logits[7], inputs="logits")
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="not one of the report's seeds"):
        pdmp.report_ensemble(report(np.array([0, 1])), seed=0)
    with pytest.raises(ValueError, match="not paired"):
        pdmp.report_ensemble(report(np.array([1, 0])))
    with pytest.raises(TypeError, match="return_details=True"):
        pdmp.report_ensemble(pdmp.Ranking(order=("a", "b"), scores={"a": 0.9, "b": 0.5}))  # type: ignore[arg-type]
