"""Classification metrics in NumPy (higher is better)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_finite_array, check_labels, check_num_classes

#: A metric maps (labels, predicted classes) to a score where higher is better.
Metric = Callable[[NDArray[np.int64], NDArray[np.int64]], float]


def to_class_predictions(predictions: ArrayLike, *, name: str = "predictions") -> NDArray[np.int64]:
    """Class indices from 1-D class predictions or 2-D scores (logits/probabilities; argmax per row)."""
    try:
        array = np.asarray(predictions)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array ({error})") from None
    if array.ndim == 2:
        if array.shape[1] == 0:
            raise ValueError(f"{name} has shape {array.shape}: scores need at least one class column")
        return np.asarray(np.argmax(check_finite_array(array, name=name), axis=1), dtype=np.int64)
    if array.ndim == 1:
        return check_labels(array, name=name)
    raise ValueError(f"{name} must be 1-D class indices or 2-D (samples, classes) scores, got shape {array.shape}")


def _classes_of(predictions: ArrayLike) -> int | None:
    """The number of classes a 2-D score array implies (its width); None for 1-D class indices."""
    try:
        shape = np.shape(predictions)
    except ValueError:  # ragged: to_class_predictions reports it
        return None
    return int(shape[1]) if len(shape) == 2 and shape[1] > 0 else None


def accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Fraction of samples whose predicted class equals the label.

    With 2-D scores, a label at or above their width (the number of classes) is refused.
    """
    y_true = check_labels(labels, num_classes=_classes_of(predictions))
    y_pred = to_class_predictions(predictions)
    _check_lengths(y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of zero samples is undefined; pass at least one sample")
    return float(np.mean(y_true == y_pred))


def macro_f1(labels: ArrayLike, predictions: ArrayLike, *, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Matches ``sklearn.metrics.f1_score(average="macro")``: a class absent from both labels and
    predictions is ignored; a class with no true positives scores 0. A label or prediction at or
    above ``num_classes`` (or the width of 2-D scores) is refused.
    """
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
        width = _classes_of(predictions)
        if width is not None and width != num_classes:
            raise ValueError(
                f"macro_f1: num_classes={num_classes} but the predictions have {width} score columns; "
                "pass the number of classes the model predicts"
            )
    else:
        num_classes = _classes_of(predictions)
    y_true = check_labels(labels, num_classes=num_classes)
    y_pred = to_class_predictions(predictions)
    if num_classes is not None:
        check_labels(y_pred, num_classes=num_classes, name="predictions")
    _check_lengths(y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("macro-F1 of zero samples is undefined; pass at least one sample")
    # Only the classes present count, so count over them: a square confusion matrix of the largest
    # index would overflow (or exhaust memory) for a label such as 10**12.
    present, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    size = present.size
    true_codes, pred_codes = codes[: y_true.size], codes[y_true.size :]
    support = np.bincount(true_codes, minlength=size)
    predicted = np.bincount(pred_codes, minlength=size)
    true_positive = np.bincount(true_codes[true_codes == pred_codes], minlength=size).astype(np.float64)
    return float(np.mean(2 * true_positive / (support + predicted)))


METRICS: dict[str, Metric] = {"accuracy": accuracy, "macro_f1": macro_f1}


def resolve_metric(metric: str | Metric) -> tuple[str, Metric]:
    """Return ``(name, function)`` for a metric name or a user callable."""
    if callable(metric):
        name = getattr(metric, "__name__", None)
        # A lambda's or partial's name says nothing in a ranking file; "custom" does not pretend.
        return (name if isinstance(name, str) and name and name != "<lambda>" else "custom"), metric
    if not isinstance(metric, str):
        raise TypeError(
            f"metric must be a metric name ({', '.join(sorted(METRICS))}) or a callable "
            f"f(labels, predicted_classes) -> float, got {type(metric).__name__} {metric!r}"
        )
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(METRICS)} or a callable")
    return metric, METRICS[metric]


def check_metric(metric: str | Metric) -> tuple[str, Metric]:
    """Validate a metric before any work (training unimodal models); returns ``(name, function)``.

    Accepts ``"accuracy"``, ``"macro_f1"`` or a callable ``f(labels, predicted_classes) -> float``;
    raises ``ValueError``/``TypeError`` naming the bad value otherwise. Keep the returned function
    (not the name) for scoring: a callable's name cannot be resolved back to it.
    """
    return resolve_metric(metric)


def _check_lengths(y_true: NDArray[np.int64], y_pred: NDArray[np.int64]) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"labels ({len(y_true)} samples) and predictions ({len(y_pred)} samples) have mismatched lengths"
        )
