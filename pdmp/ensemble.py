"""UME, the unimodal ensemble (Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", ICML 2023): train one model per modality on its own, then average their predicted class
probabilities. No fused training at all, so no modality can starve another; the paper proposes it as
the baseline that multimodal training must beat, and the method to use when it cannot.

The ranking stage already trains these unimodal models: an adapter's ``rank_unimodal(...,
return_details=True)`` returns a :class:`pdmp.UnimodalReport` holding them (``report.models[seed][m]``)
and their validation logits. :func:`report_ensemble` scores the ensemble on those validation logits at
no cost; for the test split, run ``report.models`` on it and pass their logits to
:func:`unimodal_ensemble` (``inputs="logits"``). A plain :class:`pdmp.Ranking` keeps only scores.

Read from the paper's description (its code was not consulted): the ensemble averages the unimodal
models' predictions; here those are class probabilities, and ``inputs="logits"`` takes a row-wise
softmax of each modality's logits first. ``weights`` (default equal, as UME) is an addition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_finite_array, check_modality_names, check_non_negative_finite
from pdmp.diagnostics import softmax
from pdmp.ranking import UnimodalReport

__all__ = ["report_ensemble", "unimodal_ensemble"]


def unimodal_ensemble(
    predictions: Mapping[str, ArrayLike],
    *,
    inputs: Literal["probabilities", "logits"] = "probabilities",
    weights: Mapping[str, float] | None = None,
) -> NDArray[np.float64]:
    """The unimodal ensemble's class probabilities: the (weighted) mean of each modality's.

    Args:
        predictions: per modality, an ``(n_samples, n_classes)`` array from that modality's unimodal
            model, on the same samples in the same order.
        inputs: ``"probabilities"`` (rows summing to 1) or ``"logits"`` (softmax taken row-wise).
        weights: optional non-negative weight per modality (default: equal weights, as in UME).

    Returns:
        ``(n_samples, n_classes)`` probabilities; ``argmax(axis=1)`` gives the ensemble's predictions
        (:func:`pdmp.accuracy` and :func:`pdmp.macro_f1` take the array as it is).
    """
    if not isinstance(predictions, Mapping) or not predictions:
        raise TypeError(
            "unimodal_ensemble: predictions must map each modality name to its unimodal model's "
            f"(n_samples, n_classes) array, got {predictions!r}"
        )
    if inputs not in ("probabilities", "logits"):
        raise ValueError(f"unimodal_ensemble: inputs={inputs!r}; use 'probabilities' or 'logits'")
    names = check_modality_names(predictions.keys(), where="unimodal_ensemble predictions")
    arrays: dict[str, NDArray[np.float64]] = {}
    for name in names:
        array = check_finite_array(predictions[name], name=f"predictions[{name!r}]")
        if array.ndim != 2:
            raise ValueError(
                f"unimodal_ensemble: predictions[{name!r}] has shape {array.shape}; expected (n_samples, n_classes)"
            )
        if inputs == "probabilities":
            if array.min(initial=0.0) < 0.0 or not np.allclose(array.sum(axis=1), 1.0, atol=1e-4):
                raise ValueError(
                    f"unimodal_ensemble: predictions[{name!r}] are not probabilities (negative entries or rows "
                    "not summing to 1); pass inputs='logits' for raw model outputs"
                )
        else:
            array = softmax(array)
        arrays[name] = array
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"unimodal_ensemble: the modalities' arrays differ in shape {shapes}; use the same samples")
    if weights is None:
        factors = dict.fromkeys(names, 1.0)
    else:
        if set(weights) != set(names):
            raise ValueError(
                f"unimodal_ensemble: weights name {sorted(weights)}, predictions name {sorted(names)}; give one "
                "weight per modality"
            )
        factors = {name: check_non_negative_finite(weights[name], name=f"weights[{name!r}]") for name in names}
    total = sum(factors.values())
    if total <= 0.0:
        raise ValueError(f"unimodal_ensemble: weights {dict(weights or {})} sum to 0; give some modality weight > 0")
    return np.asarray(sum(factors[name] * arrays[name] for name in names) / total, dtype=np.float64)


def report_ensemble(report: UnimodalReport, *, seed: int | None = None) -> NDArray[np.float64]:
    """UME's validation probabilities from the ranking stage's unimodal models (their validation
    logits in ``report``), for the training ``seed`` (default: the report's first)."""
    if not isinstance(report, UnimodalReport):
        raise TypeError(
            f"report_ensemble needs the UnimodalReport of rank_unimodal(..., return_details=True), got "
            f"{type(report).__name__}"
        )
    chosen = report.seeds[0] if seed is None else seed
    if chosen not in report.val_logits:
        raise ValueError(f"report_ensemble: seed {chosen!r} is not one of the report's seeds {list(report.seeds)}")
    labels = {name: np.asarray(value) for name, value in report.val_labels.items()}
    first = next(iter(labels.values()))
    if any(not np.array_equal(first, value) for value in labels.values()):
        raise ValueError(
            "report_ensemble: the modalities' validation labels differ, so their samples are not paired; "
            "an ensemble needs every modality's prediction for the same samples"
        )
    return unimodal_ensemble(report.val_logits[chosen], inputs="logits")
