"""Classification metrics in NumPy (higher is better)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_finite_array, check_labels

#: A metric maps (labels, predicted classes) to a score where higher is better.
Metric = Callable[[NDArray[np.int64], NDArray[np.int64]], float]


def to_class_predictions(predictions: ArrayLike, *, name: str = "predictions") -> NDArray[np.int64]:
    """Class indices from 1-D class predictions or 2-D scores (logits/probabilities; argmax per row)."""
    array = np.asarray(predictions)
    if array.ndim == 2:
        return np.asarray(np.argmax(check_finite_array(array, name=name), axis=1), dtype=np.int64)
    if array.ndim == 1:
        return check_labels(array, name=name)
    raise ValueError(f"{name} must be 1-D class indices or 2-D (samples, classes) scores, got shape {array.shape}")


def accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Fraction of samples whose predicted class equals the label."""
    y_true = check_labels(labels)
    y_pred = to_class_predictions(predictions)
    _check_lengths(y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of zero samples is undefined; pass at least one sample")
    return float(np.mean(y_true == y_pred))


def macro_f1(labels: ArrayLike, predictions: ArrayLike, *, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Matches ``sklearn.metrics.f1_score(average="macro")``: a class absent from both labels and
    predictions is ignored; a class with no true positives scores 0.
    """
    y_true = check_labels(labels)
    y_pred = to_class_predictions(predictions)
    _check_lengths(y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("macro-F1 of zero samples is undefined; pass at least one sample")
    size = int(max(y_true.max(), y_pred.max())) + 1 if num_classes is None else num_classes
    confusion = np.bincount(y_true * size + y_pred, minlength=size * size).reshape(size, size)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(size), where=denominator > 0)
    return float(f1[present].mean())


METRICS: dict[str, Metric] = {"accuracy": accuracy, "macro_f1": macro_f1}


def resolve_metric(metric: str | Metric) -> tuple[str, Metric]:
    """Return ``(name, function)`` for a metric name or a user callable."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(METRICS)} or a callable")
    return metric, METRICS[metric]


def _check_lengths(y_true: NDArray[np.int64], y_pred: NDArray[np.int64]) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"labels ({len(y_true)} samples) and predictions ({len(y_pred)} samples) have mismatched lengths"
        )
