"""Stage 1 of PDMP: rank modalities by how well each performs on its own.

Feed each independently trained unimodal model's held-out predictions (or precomputed scores); get a
:class:`Ranking` whose first entry is the performance-dominant modality.

Tie rule (deterministic): modalities are ordered by score, higher first; equal scores are ordered by
modality name (ascending, Unicode code points). A warning is issued when the margin between the first
and second modality is below ``warn_margin``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pdmp._validation import (
    check_labels,
    check_modality_names,
    check_non_negative_int,
    check_same_length,
    check_same_modalities,
)
from pdmp.metrics import Metric, resolve_metric, to_class_predictions

SCHEMA = "pdmp.ranking"
SCHEMA_VERSION = 1


class RankingWarning(UserWarning):
    """The ranking is close to a tie: the dominant modality may not be reliably dominant."""


class RankingFileError(ValueError):
    """A ranking file is unreadable, corrupt, or of an unsupported schema version."""


def order_by_score(scores: Mapping[str, float]) -> tuple[str, ...]:
    """Modalities by score, higher first; ties by name. The single ordering rule of the library."""
    return tuple(sorted(scores, key=lambda name: (-scores[name], name)))


@dataclass(frozen=True)
class Ranking:
    """Modalities ordered from performance-dominant to weakest.

    Attributes:
        order: modality names, best first.
        scores: held-out score per modality (higher is better).
        metric: the name of the metric the scores are in.
        stability: with bootstrap, the fraction of resamples of the evaluation set in which
            ``dominant`` stays on top; ``None`` without bootstrap.
        n_bootstrap: number of bootstrap resamples (0 when none).
        seed: the bootstrap seed.
        budget: free-form provenance of how the unimodal models were trained (epochs, subset
            fraction, ...); stored in the file.
    """

    order: tuple[str, ...]
    scores: dict[str, float]
    metric: str = "accuracy"
    stability: float | None = None
    n_bootstrap: int = 0
    seed: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_modality_names(self.order, where="Ranking.order")
        if set(self.scores) != set(self.order):
            raise ValueError(
                f"Ranking: scores name {sorted(self.scores)} but order names {sorted(self.order)}; "
                "they must name the same modalities"
            )
        for name, score in self.scores.items():
            if not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"Ranking: score of {name!r} is {score!r}; scores must be finite numbers")
        if tuple(self.order) != order_by_score(self.scores):
            raise ValueError(
                f"Ranking: order {list(self.order)} disagrees with scores {self.scores}; "
                f"expected {list(order_by_score(self.scores))} (higher score first, ties by name)"
            )
        if self.stability is not None and not 0.0 <= self.stability <= 1.0:
            raise ValueError(f"Ranking: stability must be in [0, 1], got {self.stability!r}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.order

    @property
    def dominant(self) -> str:
        """The performance-dominant modality (best unimodal score)."""
        return self.order[0]

    @property
    def weakest(self) -> str:
        return self.order[-1]

    @property
    def margin(self) -> float:
        """Score of the first modality minus that of the second."""
        return self.scores[self.order[0]] - self.scores[self.order[1]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "metric": self.metric,
            "order": list(self.order),
            "scores": {name: float(self.scores[name]) for name in self.order},
            "margin": self.margin,
            "stability": self.stability,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "budget": self.budget,
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, two-space indent, trailing newline. Equal rankings give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the canonical JSON atomically (a temp file renamed into place)."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(self.to_json(), encoding="utf-8")
        os.replace(temporary, target)
        return target

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "ranking") -> Ranking:
        if not isinstance(data, dict):
            raise RankingFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise RankingFileError(
                f"{source}: 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}; is this a pdmp ranking file?"
            )
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RankingFileError(
                f"{source}: schema_version {version!r} is not supported (this pdmp reads {SCHEMA_VERSION}); "
                "re-create the ranking with this version of pdmp"
            )
        required = ("order", "scores", "metric")
        missing = [key for key in required if key not in data]
        if missing:
            raise RankingFileError(f"{source}: missing field(s) {missing}")
        if not isinstance(data["scores"], dict) or not isinstance(data["order"], list):
            raise RankingFileError(f"{source}: 'order' must be a list and 'scores' an object")
        try:
            return cls(
                order=tuple(data["order"]),
                scores={str(k): v for k, v in data["scores"].items()},
                metric=str(data["metric"]),
                stability=data.get("stability"),
                n_bootstrap=int(data.get("n_bootstrap", 0)),
                seed=data.get("seed"),
                budget=dict(data.get("budget") or {}),
            )
        except (TypeError, ValueError) as error:
            raise RankingFileError(f"{source}: invalid ranking: {error}") from error

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ranking:
        """Read a ranking file written by :meth:`save`; names what is wrong if it is not valid."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RankingFileError(f"ranking file {str(path)!r} does not exist; run the ranking stage first") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RankingFileError(
                f"ranking file {str(path)!r} is not valid JSON ({error}); it may be truncated, re-create it"
            ) from error
        return cls.from_dict(data, source=f"ranking file {str(path)!r}")


def rank_modalities(
    predictions: Mapping[str, ArrayLike] | None = None,
    labels: ArrayLike | None = None,
    *,
    scores: Mapping[str, float] | None = None,
    metric: str | Metric = "accuracy",
    n_bootstrap: int = 0,
    seed: int = 0,
    warn_margin: float = 0.01,
    budget: Mapping[str, Any] | None = None,
) -> Ranking:
    """Rank modalities from held-out unimodal predictions, or from precomputed scores.

    Args:
        predictions: per modality, class indices (1-D) or scores/logits (2-D, argmax taken) on the
            same held-out samples, in the same order.
        labels: the true classes of those samples.
        scores: instead of predictions, one finite score per modality (higher is better).
        metric: ``"accuracy"`` (default), ``"macro_f1"``, or ``f(labels, predicted_classes) -> float``.
        n_bootstrap: if > 0, resample the evaluation samples (with replacement, shared across
            modalities because they are paired) this many times and record how often the dominant
            modality stays on top.
        seed: seed of the bootstrap.
        warn_margin: warn with :class:`RankingWarning` when first minus second is below this.
        budget: provenance stored in the ranking (e.g. ``{"epochs": 5, "subset": 0.25}``).
    """
    metric_name, metric_fn = resolve_metric(metric)
    if (predictions is None) == (scores is None):
        raise ValueError("pass either predictions (with labels) or scores, not both and not neither")
    stability: float | None = None
    if scores is not None:
        check_modality_names(scores.keys(), where="scores")
        if n_bootstrap:
            raise ValueError("bootstrap needs predictions and labels; set n_bootstrap=0 when passing scores")
        values: dict[str, float] = {}
        for name, value in scores.items():
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"score of modality {name!r} is {value!r}; scores must be finite numbers")
            values[name] = number
    else:
        assert predictions is not None
        if labels is None:
            raise ValueError("predictions need labels: pass labels=<true classes of the held-out samples>")
        check_modality_names(predictions.keys(), where="predictions")
        y = check_labels(labels)
        classes = {name: to_class_predictions(p, name=f"predictions[{name!r}]") for name, p in predictions.items()}
        check_same_length({"labels": y, **classes}, where="rank_modalities")
        if y.size == 0:
            raise ValueError("rank_modalities: no held-out samples; pass at least one sample")
        values = {name: _score(metric_fn, y, pred, name) for name, pred in classes.items()}
        if n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
        if n_bootstrap:
            dominant = order_by_score(values)[0]
            rng = np.random.default_rng(seed)
            stays = 0
            for _ in range(n_bootstrap):
                index = rng.integers(0, y.size, size=y.size)
                resampled = {name: _score(metric_fn, y[index], pred[index], name) for name, pred in classes.items()}
                stays += order_by_score(resampled)[0] == dominant
            stability = stays / n_bootstrap
    ranking = Ranking(
        order=order_by_score(values),
        scores=values,
        metric=metric_name,
        stability=stability,
        n_bootstrap=int(n_bootstrap),
        seed=seed if n_bootstrap else None,
        budget=dict(budget or {}),
    )
    if ranking.margin < warn_margin:
        warnings.warn(
            f"modalities {ranking.order[0]!r} and {ranking.order[1]!r} are within {ranking.margin:.4g} "
            f"{metric_name} (below warn_margin={warn_margin}); the dominant modality is uncertain, "
            "evaluate on more held-out samples or train the unimodal models longer",
            RankingWarning,
            stacklevel=2,
        )
    return ranking


def _score(metric_fn: Metric, y: Any, predicted: Any, name: str) -> float:
    value = float(metric_fn(y, predicted))
    if not math.isfinite(value):
        raise ValueError(f"metric returned {value!r} for modality {name!r}; a metric must return a finite number")
    return value


def check_unimodal_request(
    factories: Mapping[str, Any],
    train: Mapping[str, Any],
    val: Mapping[str, Any],
    *,
    epochs: Any,
    subset: Any,
    batch_size: Any,
    lr: Any,
) -> tuple[tuple[str, ...], int, int]:
    """Validate the arguments shared by the adapters' ``rank_unimodal``; return (names, epochs, batch_size)."""
    names = check_modality_names(factories.keys(), where="rank_unimodal factories")
    check_same_modalities(train.keys(), names, where="rank_unimodal train")
    check_same_modalities(val.keys(), names, where="rank_unimodal val")
    epochs = check_non_negative_int(epochs, name="epochs")
    if epochs < 1:
        raise ValueError("epochs must be >= 1; a unimodal model has to be trained before it can be ranked")
    if not (isinstance(subset, (int, float)) and 0.0 < subset <= 1.0):
        raise ValueError(f"subset must be a fraction in (0, 1], got {subset!r}")
    batch_size = check_non_negative_int(batch_size, name="batch_size")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return names, epochs, batch_size


def rank_unimodal_outputs(
    logits: Mapping[str, ArrayLike],
    labels: Mapping[str, ArrayLike],
    *,
    budget: Mapping[str, Any],
    metric: str | Metric = "accuracy",
    n_bootstrap: int = 0,
    seed: int = 0,
    warn_margin: float = 0.01,
) -> Ranking:
    """Rank from each unimodal model's held-out logits, as the adapters' ``rank_unimodal`` do.

    Paired validation sets (the same labels for every modality) are ranked on the samples, so the
    bootstrap is available; unpaired ones are ranked by their scores.
    """
    names = list(logits)
    first = np.asarray(labels[names[0]])
    paired = all(np.asarray(labels[n]).shape == first.shape and np.array_equal(labels[n], first) for n in names)
    if paired:
        return rank_modalities(
            logits, first, metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin, budget=budget
        )
    if n_bootstrap:
        raise ValueError(
            "n_bootstrap needs paired validation sets (same samples and labels for every modality); "
            "pass paired val data or n_bootstrap=0"
        )
    metric_name, metric_fn = resolve_metric(metric)
    scores = {
        name: _score(metric_fn, check_labels(labels[name]), to_class_predictions(logits[name]), name) for name in names
    }
    return rank_modalities(scores=scores, metric=metric_name, warn_margin=warn_margin, budget=budget)
