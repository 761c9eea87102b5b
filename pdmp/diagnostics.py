"""Which modality does a fused model lean on? Scores from per-modality logits.

The score of a modality is OGM-GE's: the softmax mass its (decomposed) logits put on the true
class. Summed over a batch it is OGM-GE's ``s_u``; averaged it is a dependency in [0, 1]; divided by
the sum over modalities it is that modality's share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_finite_array, check_labels, check_mapping, check_modality_names


def softmax(logits: ArrayLike) -> NDArray[np.float64]:
    """Row-wise softmax, stable for large logits. NaN/inf logits, a scalar and zero classes are refused."""
    array = check_finite_array(logits, name="logits")
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(
            f"logits must have a last axis of >= 1 class scores (shape (samples, classes)), got shape {array.shape}"
        )
    shifted = array - array.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def true_class_mass(logits: Mapping[str, ArrayLike], labels: ArrayLike) -> dict[str, NDArray[np.float64]]:
    """Per modality, per sample: softmax probability of the true class. Validates shapes and values."""
    check_mapping(logits, name="logits", example="{'audio': audio_logits, 'image': image_logits}")
    names = check_modality_names(logits.keys(), where="logits")
    y = check_labels(labels)
    result: dict[str, NDArray[np.float64]] = {}
    for name in names:
        array = check_finite_array(logits[name], name=f"logits[{name!r}]")
        if array.ndim != 2:
            raise ValueError(f"logits[{name!r}] must be 2-D (samples, classes), got shape {array.shape}")
        if array.shape[0] != y.shape[0]:
            raise ValueError(
                f"logits[{name!r}] has {array.shape[0]} samples but labels has {y.shape[0]}; "
                "pass the logits and labels of the same batch"
            )
        check_labels(y, num_classes=array.shape[1])
        result[name] = softmax(array)[np.arange(y.shape[0]), y]
    return result


def modality_scores(logits: Mapping[str, ArrayLike], labels: ArrayLike) -> dict[str, float]:
    """OGM-GE's batch scores ``s_u = sum_i softmax(out_u)[i, y_i]``.

    Sums (not means) so that data-parallel adapters can all-reduce them by summation.
    """
    return {name: float(mass.sum()) for name, mass in true_class_mass(logits, labels).items()}


@dataclass(frozen=True)
class Dependency:
    """How much a fused model relies on each modality for one batch or epoch.

    ``mass[m]``: mean softmax probability of the true class from modality m's logits, in [0, 1].
    ``share[m]``: ``mass[m]`` over the sum across modalities (sums to 1).
    """

    mass: dict[str, float]
    share: dict[str, float]


def dependency(logits: Mapping[str, ArrayLike], labels: ArrayLike) -> Dependency:
    """Dependency scores of a fused model from its per-modality (decomposed) logits."""
    masses = true_class_mass(logits, labels)
    if not next(iter(masses.values())).size:
        raise ValueError("dependency of zero samples is undefined; pass at least one sample")
    mean = {name: float(value.mean()) for name, value in masses.items()}
    return Dependency(mass=mean, share=shares(mean))


def shares(scores: Mapping[str, float]) -> dict[str, float]:
    """Normalise non-negative scores to sum to 1 (equal shares when all are 0)."""
    total = float(sum(scores.values()))
    if total <= 0:
        return {name: 1.0 / len(scores) for name in scores}
    return {name: float(value) / total for name, value in scores.items()}
