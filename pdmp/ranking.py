"""Stage 1 of PDMP: rank modalities by how well each performs on its own.

Feed each independently trained unimodal model's held-out predictions (or precomputed scores); get a
:class:`Ranking` whose first entry is the performance-dominant modality.

Tie rule (deterministic): modalities are ordered by score, higher first; equal scores are ordered by
modality name (ascending, Unicode code points). A warning is issued when the margin between the first
and second modality is below ``warn_margin``. The bootstrap stability does *not* use the name rule:
a tie for the top inside a resample counts ``1/k`` for each of the ``k`` tied modalities, so renaming
modalities never changes the stability.

Files are plain JSON (never pickle); every field read from a file is checked and a bad one raises
:class:`RankingFileError` naming the file and the field.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pdmp._validation import (
    check_bool,
    check_labels,
    check_modality_names,
    check_non_negative_finite,
    check_non_negative_int,
    check_number,
    check_positive_int,
    check_same_length,
    check_same_modalities,
    check_seed,
    check_sequence,
    parse_json,
)
from pdmp.metrics import Metric, check_metric, to_class_predictions

SCHEMA = "pdmp.ranking"
SCHEMA_VERSION = 1
_FILE_FIELDS = (
    "schema",
    "schema_version",
    "metric",
    "order",
    "scores",
    "margin",
    "stability",
    "n_bootstrap",
    "seed",
    "budget",
    "seed_scores",
    "seed_agreement",
)


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
        seed_scores: with unimodal models trained over several seeds (:func:`combine_rankings`), each
            modality's score per training seed; ``scores`` are their means.
        seed_agreement: the fraction of training seeds whose own ranking puts ``dominant`` on top
            (ties split evenly): the training-seed counterpart of ``stability``.

    Every field is checked and normalised at construction (scores to ``float``, NumPy integers to
    ``int``, ``budget`` to its JSON form), so a ranking that exists can always be saved.
    A tie for the top inside a bootstrap resample counts ``1/k`` for each of the ``k`` tied
    modalities: identical predictions give stability 1/2, whatever the modalities are called.
    """

    order: tuple[str, ...]
    scores: dict[str, float]
    metric: str = "accuracy"
    stability: float | None = None
    n_bootstrap: int = 0
    seed: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    seed_scores: dict[str, list[float]] | None = None
    seed_agreement: float | None = None

    def __post_init__(self) -> None:
        order = check_modality_names(self.order, where="Ranking field 'order'")
        if not isinstance(self.scores, Mapping):
            raise TypeError(f"Ranking field 'scores' must map modality names to numbers, got {self.scores!r}")
        if set(self.scores) != set(order):
            raise ValueError(
                f"Ranking: scores name {sorted(map(str, self.scores))} but order names {sorted(order)}; "
                "fields 'scores' and 'order' must name the same modalities"
            )
        scores: dict[str, float] = {}
        for name in order:
            value = self.scores[name]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"Ranking field 'scores': score of {name!r} is {value!r}; scores must be numbers")
            number = check_number(value, name=f"Ranking field 'scores': score of {name!r}")
            if not math.isfinite(number):
                raise ValueError(f"Ranking field 'scores': score of {name!r} is {value!r}; scores must be finite")
            scores[name] = number
        if order != order_by_score(scores):
            raise ValueError(
                f"Ranking: field 'order' {list(order)} disagrees with scores {scores}; "
                f"expected {list(order_by_score(scores))} (higher score first, ties by name)"
            )
        if not isinstance(self.metric, str) or not self.metric:
            raise TypeError(f"Ranking field 'metric' must be a non-empty metric name, got {self.metric!r}")
        n_bootstrap = check_non_negative_int(self.n_bootstrap, name="Ranking field 'n_bootstrap'")
        stability = self.stability
        if stability is not None:
            stability = check_number(stability, name="Ranking field 'stability'")
            if not 0.0 <= stability <= 1.0:
                raise ValueError(f"Ranking field 'stability' must be in [0, 1], got {self.stability!r}")
        if (stability is None) != (n_bootstrap == 0):
            raise ValueError(
                f"Ranking: field 'stability' is {self.stability!r} but 'n_bootstrap' is {n_bootstrap}; "
                "a stability exists exactly when n_bootstrap > 0"
            )
        seed = None if self.seed is None else check_seed(self.seed, name="Ranking field 'seed'")
        try:
            # The JSON form is what a saved and reloaded ranking holds, so equality survives the round trip.
            budget = _json_budget(self.budget)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Ranking field 'budget': {error}") from None
        seed_scores, seed_agreement = _check_seed_fields(self.seed_scores, self.seed_agreement, order, scores)
        normalised: tuple[tuple[str, Any], ...] = (
            ("seed_scores", seed_scores),
            ("seed_agreement", seed_agreement),
            ("order", order),
            ("scores", scores),
            ("n_bootstrap", n_bootstrap),
            ("stability", stability),
            ("seed", seed),
            ("budget", budget),
        )
        for attribute, value in normalised:
            object.__setattr__(self, attribute, value)

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
        } | (
            {"seed_scores": self.seed_scores, "seed_agreement": self.seed_agreement}
            if self.seed_scores is not None
            else {}
        )

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
        """Rebuild a ranking from :meth:`to_dict`'s dict; every field is checked (``RankingFileError``)."""
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
        unknown = sorted(set(data) - set(_FILE_FIELDS))
        if unknown:
            raise RankingFileError(
                f"{source}: unknown field(s) {unknown}; a ranking file holds only {list(_FILE_FIELDS)}"
            )
        if not isinstance(data["order"], list):
            raise RankingFileError(f"{source}: field 'order' must be a list of names, got {data['order']!r}")
        if not isinstance(data["scores"], dict):
            raise RankingFileError(f"{source}: field 'scores' must be an object, got {data['scores']!r}")
        if not isinstance(data["metric"], str):
            raise RankingFileError(f"{source}: field 'metric' must be a string, got {data['metric']!r}")
        try:
            ranking = cls(
                order=tuple(data["order"]),
                scores=dict(data["scores"]),
                metric=data["metric"],
                stability=data.get("stability"),
                n_bootstrap=data.get("n_bootstrap", 0),
                seed=data.get("seed"),
                budget=data.get("budget", {}),
                seed_scores=data.get("seed_scores"),
                seed_agreement=data.get("seed_agreement"),
            )
        except (TypeError, ValueError) as error:
            raise RankingFileError(f"{source}: invalid ranking: {error}") from error
        if "margin" in data:
            margin = data["margin"]
            if (
                isinstance(margin, bool)
                or not isinstance(margin, (int, float))
                or not math.isclose(margin, ranking.margin, rel_tol=1e-9, abs_tol=1e-12)
            ):
                raise RankingFileError(
                    f"{source}: field 'margin' is {margin!r} but the scores give {ranking.margin!r}; "
                    "the file was altered, re-create it"
                )
        return ranking

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ranking:
        """Read a ranking file written by :meth:`save`; names what is wrong if it is not valid."""
        source = f"ranking file {str(path)!r}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RankingFileError(f"{source} does not exist; run the ranking stage first") from None
        except UnicodeDecodeError as error:
            raise RankingFileError(f"{source} is not UTF-8 text ({error}); is it a ranking file?") from None
        except OSError as error:
            raise RankingFileError(f"{source} cannot be read: {error}") from None
        # Strict parsing (shared with every pdmp file): NaN, duplicate keys, deep nesting and huge
        # integers are refused as RankingFileError, never a raw RecursionError.
        return cls.from_dict(parse_json(text, source=source, error=RankingFileError), source=source)


def _check_seed_fields(
    seed_scores: Any, seed_agreement: Any, order: tuple[str, ...], scores: Mapping[str, float]
) -> tuple[dict[str, list[float]] | None, float | None]:
    """Per-training-seed scores (their means must be ``scores``) and the seed agreement, checked together."""
    if seed_scores is None and seed_agreement is None:
        return None, None
    if seed_scores is None or seed_agreement is None:
        raise ValueError("Ranking fields 'seed_scores' and 'seed_agreement' go together; give both or neither")
    if not isinstance(seed_scores, Mapping) or set(seed_scores) != set(order):
        raise ValueError(
            f"Ranking field 'seed_scores' must map every modality to its per-seed scores, got {seed_scores!r}"
        )
    result: dict[str, list[float]] = {}
    for name in order:
        values = seed_scores[name]
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
            raise ValueError(f"Ranking field 'seed_scores' of {name!r} must be a list of numbers, got {values!r}")
        result[name] = [check_number(v, name=f"Ranking field 'seed_scores' of {name!r}") for v in values]
        if not all(math.isfinite(v) for v in result[name]):
            raise ValueError(f"Ranking field 'seed_scores' of {name!r} holds a non-finite score: {values!r}")
        if not math.isclose(
            float(np.mean(result[name])) if result[name] else math.nan, scores[name], rel_tol=1e-9, abs_tol=1e-12
        ):
            raise ValueError(
                f"Ranking: the score of {name!r} ({scores[name]!r}) is not the mean of its seed_scores {result[name]!r}"
            )
    counts = {len(values) for values in result.values()}
    if len(counts) != 1 or counts == {0}:
        raise ValueError(
            f"Ranking field 'seed_scores' needs the same number (>= 1) of seeds per modality, got {seed_scores!r}"
        )
    agreement = check_number(seed_agreement, name="Ranking field 'seed_agreement'")
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"Ranking field 'seed_agreement' must be in [0, 1], got {seed_agreement!r}")
    return result, agreement


def combine_rankings(rankings: Sequence[Ranking], *, warn: bool = True) -> Ranking:
    """One ranking from unimodal models trained over several seeds (one :class:`Ranking` per seed).

    Scores are the per-seed means; ``seed_agreement`` is the fraction of seeds whose own ranking has
    the combined dominant modality on top (ties split evenly); ``stability`` is the mean of the
    per-seed bootstrap stabilities (when every ranking has one). The two answer different questions:
    the bootstrap resamples the *evaluation* samples of fixed models, the seeds retrain the models.
    A :class:`RankingWarning` says when they disagree (the bootstrap trusts a top that another
    training seed reverses) or when some seed puts another modality on top.
    """
    if isinstance(rankings, Ranking):
        raise TypeError(
            "combine_rankings needs a list of pdmp.Ranking (one per training seed), got one Ranking; "
            "pass [ranking] or use the ranking itself"
        )
    check_bool(warn, name="warn")
    items = list(check_sequence(rankings, name="rankings", example="[ranking_seed0, ranking_seed1]", allow_empty=True))
    if not items or not all(isinstance(item, Ranking) for item in items):
        raise TypeError(
            f"combine_rankings needs a non-empty list of pdmp.Ranking (one per training seed), got {rankings!r}"
        )
    first = items[0]
    for index, item in enumerate(items[1:], start=1):
        if set(item.order) != set(first.order) or item.metric != first.metric:
            raise ValueError(
                f"combine_rankings: ranking {index} has modalities {sorted(item.order)} / metric {item.metric!r}, "
                f"ranking 0 has {sorted(first.order)} / {first.metric!r}; combine rankings of the same models only"
            )
    per_seed = {name: [item.scores[name] for item in items] for name in first.order}
    means = {name: float(np.mean(values)) for name, values in per_seed.items()}
    order = order_by_score(means)
    agreement = 0.0
    for item in items:
        best = max(item.scores.values())
        tied = [name for name, value in item.scores.items() if value == best]
        agreement += (1.0 / len(tied)) if order[0] in tied else 0.0
    agreement /= len(items)
    with_bootstrap = [item for item in items if item.stability is not None]
    stability = (
        float(np.mean([item.stability for item in with_bootstrap])) if len(with_bootstrap) == len(items) else None
    )
    n_bootstrap = first.n_bootstrap if stability is not None else 0
    combined = Ranking(
        order=order,
        scores=means,
        metric=first.metric,
        stability=stability,
        n_bootstrap=n_bootstrap,
        seed=first.seed if stability is not None else None,
        budget={**first.budget, "training_seeds": len(items)},
        seed_scores=per_seed,
        seed_agreement=agreement,
    )
    if warn and stability is not None and agreement < 1.0 and stability - agreement > 0.2:
        warnings.warn(
            f"the bootstrap over evaluation samples keeps {order[0]!r} on top in {stability:.0%} of resamples, "
            f"but only {agreement:.0%} of the {len(items)} training seeds put it on top: the ranking depends on "
            "the training seed; train the unimodal models longer or on more data",
            RankingWarning,
            stacklevel=2,
        )
    elif warn and agreement < 1.0:
        warnings.warn(
            f"{order[0]!r} is on top for {agreement:.0%} of the {len(items)} training seeds only; "
            "the dominant modality is uncertain",
            RankingWarning,
            stacklevel=2,
        )
    return combined


@dataclass(frozen=True)
class RankingOptions:
    """The checked options of a ranking call (see :func:`check_ranking_options`)."""

    metric_name: str
    metric_fn: Metric
    n_bootstrap: int
    seed: int
    warn_margin: float
    budget: dict[str, Any]


def check_ranking_options(
    *,
    metric: str | Metric = "accuracy",
    n_bootstrap: Any = 0,
    seed: Any = 0,
    warn_margin: Any = 0.01,
    budget: Mapping[str, Any] | None = None,
) -> RankingOptions:
    """Check the options of :func:`rank_modalities` before any work is done.

    The adapters' ``rank_unimodal`` call this before training, so a bad metric, ``n_bootstrap=2.5``
    or an unserialisable ``budget`` fails in a second, not after every unimodal model has trained.
    """
    metric_name, metric_fn = check_metric(metric)
    return RankingOptions(
        metric_name=metric_name,
        metric_fn=metric_fn,
        n_bootstrap=check_non_negative_int(n_bootstrap, name="n_bootstrap"),
        seed=check_seed(seed),
        warn_margin=check_non_negative_finite(warn_margin, name="warn_margin"),
        budget=_json_budget(budget if budget is not None else {}),
    )


def _json_budget(budget: Any) -> dict[str, Any]:
    """``budget`` in its JSON form (what a saved and reloaded ranking holds)."""
    if not isinstance(budget, Mapping):
        raise TypeError(f"budget must be a dict, got {type(budget).__name__} {budget!r}")
    if not all(isinstance(key, str) for key in budget):
        raise TypeError(f"budget keys must be strings, got {sorted(map(repr, budget))}")
    try:
        result: dict[str, Any] = json.loads(json.dumps(dict(budget), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            "budget must hold JSON values (str, int, float, bool, None, lists, dicts with string keys) "
            f"and finite numbers only: {error}"
        ) from None
    return result


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
    num_classes: int | None = None,
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
            modality stays on top. Each resample draws ``rng.integers(0, n, size=n)`` from
            ``numpy.random.default_rng(seed)``; a tie for the top counts ``1/k`` for each of the
            ``k`` tied modalities (names never break a tie here), so ``stability`` is the expected
            fraction of resamples the dominant modality tops.
        seed: seed of the bootstrap (an integer >= 0).
        warn_margin: warn with :class:`RankingWarning` when first minus second is below this.
        budget: provenance stored in the ranking (e.g. ``{"epochs": 5, "subset": 0.25}``); JSON values.
        num_classes: the number of classes; labels and class predictions must lie in
            ``0..num_classes-1``. Taken from the width of 2-D scores when not given (all widths must agree).

    Every argument is checked before any scoring; bad input raises ``ValueError``/``TypeError``
    naming the argument.
    """
    options = check_ranking_options(
        metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin, budget=budget
    )
    metric_fn = options.metric_fn
    if (predictions is None) == (scores is None):
        raise ValueError("pass either predictions (with labels) or scores, not both and not neither")
    stability: float | None = None
    if scores is not None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must map modality names to numbers, got {type(scores).__name__}")
        check_modality_names(scores.keys(), where="scores")
        if labels is not None or num_classes is not None:
            raise ValueError("labels/num_classes go with predictions; pass scores alone")
        if options.n_bootstrap:
            raise ValueError("bootstrap needs predictions and labels; set n_bootstrap=0 when passing scores")
        values: dict[str, float] = {}
        for name, value in scores.items():
            number = check_number(value, name=f"score of modality {name!r}")
            if not math.isfinite(number):
                raise ValueError(f"score of modality {name!r} is {value!r}; scores must be finite numbers")
            values[name] = number
    else:
        assert predictions is not None
        if not isinstance(predictions, Mapping):
            raise TypeError(
                f"predictions must map modality names to arrays, got {type(predictions).__name__}; "
                "e.g. {'audio': audio_logits, 'visual': visual_logits}"
            )
        if labels is None:
            raise ValueError("predictions need labels: pass labels=<true classes of the held-out samples>")
        check_modality_names(predictions.keys(), where="predictions")
        classes_count = _classes_count(predictions, num_classes)
        y = check_labels(labels, num_classes=classes_count)
        classes = {name: to_class_predictions(p, name=f"predictions[{name!r}]") for name, p in predictions.items()}
        if classes_count is not None:
            for name, predicted in classes.items():
                check_labels(predicted, num_classes=classes_count, name=f"predictions[{name!r}]")
        check_same_length({"labels": y, **classes}, where="rank_modalities")
        if y.size == 0:
            raise ValueError("rank_modalities: no held-out samples; pass at least one sample")
        values = {name: _score(metric_fn, y, pred, name) for name, pred in classes.items()}
        if options.n_bootstrap:
            stability = _bootstrap_stability(metric_fn, y, classes, order_by_score(values)[0], options)
    ranking = Ranking(
        order=order_by_score(values),
        scores=values,
        metric=options.metric_name,
        stability=stability,
        n_bootstrap=options.n_bootstrap,
        seed=options.seed if options.n_bootstrap else None,
        budget=options.budget,
    )
    if ranking.margin < options.warn_margin:
        warnings.warn(
            f"modalities {ranking.order[0]!r} and {ranking.order[1]!r} are within {ranking.margin:.4g} "
            f"{options.metric_name} (below warn_margin={warn_margin}); the dominant modality is uncertain, "
            "evaluate on more held-out samples or train the unimodal models longer",
            RankingWarning,
            stacklevel=2,
        )
    return ranking


def _classes_count(predictions: Mapping[str, ArrayLike], num_classes: Any) -> int | None:
    """``num_classes`` checked against the widths of 2-D predictions, or inferred from them."""
    widths = {name: int(np.shape(p)[1]) for name, p in predictions.items() if np.ndim(p) == 2}
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, name="num_classes")
    expected = num_classes if num_classes is not None else next(iter(widths.values()), None)
    wrong = {name: width for name, width in widths.items() if width != expected}
    if wrong:
        raise ValueError(
            f"rank_modalities: predictions have {widths} score columns"
            + (f" but num_classes={num_classes}" if num_classes is not None else "")
            + "; every modality's scores must have one column per class"
        )
    return expected


def _bootstrap_stability(
    metric_fn: Metric,
    y: np.ndarray,
    classes: Mapping[str, np.ndarray],
    dominant: str,
    options: RankingOptions,
) -> float:
    """Expected fraction of resamples in which ``dominant`` has the top score; ties split evenly."""
    rng = np.random.default_rng(options.seed)
    stays = 0.0
    for _ in range(options.n_bootstrap):
        index = rng.integers(0, y.size, size=y.size)
        resampled = {name: _score(metric_fn, y[index], pred[index], name) for name, pred in classes.items()}
        best = max(resampled.values())
        tied = [name for name, value in resampled.items() if value == best]
        # A tie is not a win: each of the k tied modalities gets 1/k, never decided by its name.
        if dominant in tied:
            stays += 1.0 / len(tied)
    return stays / options.n_bootstrap


def _score(metric_fn: Metric, y: Any, predicted: Any, name: str) -> float:
    raw = metric_fn(y, predicted)
    if isinstance(raw, np.ndarray) and raw.ndim == 0:
        raw = raw[()]
    if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"metric returned {type(raw).__name__} {raw!r} for modality {name!r}; a metric must return a number"
        )
    value = float(raw)
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
    metric: Any = "accuracy",
    n_bootstrap: Any = 0,
    seed: Any = 0,
    warn_margin: Any = 0.01,
    lr_optional: bool = False,
) -> tuple[tuple[str, ...], int, int]:
    """Validate the arguments shared by the adapters' ``rank_unimodal``; return (names, epochs, batch_size).

    Called before any training: the ranking options (``metric``, ``n_bootstrap``, ``seed``,
    ``warn_margin``) are checked here too (:func:`check_ranking_options`), so a bad one fails at once.
    With ``lr_optional=True``, ``lr=None`` is accepted: the caller's optimizer factory sets its own
    learning rate (the adapter then checks that its optimizer does not need one).
    """
    for what, value in (("factories", factories), ("train", train), ("val", val)):
        if not isinstance(value, Mapping):
            raise TypeError(f"rank_unimodal {what} must be a dict keyed by modality name, got {type(value).__name__}")
    names = check_modality_names(factories.keys(), where="rank_unimodal factories")
    check_same_modalities(train.keys(), names, where="rank_unimodal train")
    check_same_modalities(val.keys(), names, where="rank_unimodal val")
    epochs = check_non_negative_int(epochs, name="epochs")
    if epochs < 1:
        raise ValueError("epochs must be >= 1; a unimodal model has to be trained before it can be ranked")
    if isinstance(subset, (bool, np.bool_)) or not (
        isinstance(subset, (int, float, np.integer, np.floating)) and 0.0 < subset <= 1.0
    ):
        raise ValueError(f"subset must be a fraction in (0, 1], got {subset!r}")
    batch_size = check_non_negative_int(batch_size, name="batch_size")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not (lr is None and lr_optional) and (
        isinstance(lr, (bool, np.bool_))
        or not (isinstance(lr, (int, float, np.integer, np.floating)) and math.isfinite(lr) and lr > 0)
    ):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    check_ranking_options(metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin)
    return names, epochs, batch_size


def check_training_seeds(seed: Any = None, seeds: Any = None) -> tuple[int, ...]:
    """The training seeds of a ``rank_unimodal`` call: ``seeds``, or ``(seed,)``, or ``(0,)``.

    ``seeds`` must be a non-empty list of distinct integers >= 0; passing ``seed`` as well is refused
    (which one would count?). Checked before any training.
    """
    if seeds is None:
        return (0 if seed is None else check_seed(seed),)
    if seed is not None:
        raise ValueError(
            f"pass seed={seed!r} or seeds={seeds!r}, not both; "
            "seeds=(0, 1, 2) trains every unimodal model once per seed"
        )
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Iterable):
        raise TypeError(
            f"seeds must be a list of integers such as (0, 1, 2), got {type(seeds).__name__} {seeds!r}; "
            "for a single training seed pass seed="
        )
    result = tuple(check_seed(value, name=f"seeds entry {value!r}") for value in seeds)
    if not result:
        raise ValueError("seeds is empty; pass at least one training seed, e.g. seeds=(0, 1, 2)")
    duplicates = sorted({value for value in result if result.count(value) > 1})
    if duplicates:
        raise ValueError(
            f"seeds {list(result)} repeat {duplicates}; a repeated seed retrains the same model and would "
            "inflate the seed agreement, pass distinct seeds"
        )
    return result


@dataclass(frozen=True)
class UnderOptimization:
    """Does the multimodal model end below its best unimodal model? (See :func:`under_optimization`.)

    Attributes:
        metric: the metric both scores are in (the ranking's).
        fused_score: the multimodal model's score (the mean, when several were given).
        best_modality: the ranking's dominant modality.
        best_unimodal_score: its unimodal score.
        gap: ``best_unimodal_score - fused_score``; positive when the multimodal model is below its best
            unimodal model, by that much.
        under_optimized: ``gap > tolerance``.
        tolerance: the margin the gap had to exceed.
    """

    metric: str
    fused_score: float
    best_modality: str
    best_unimodal_score: float
    gap: float
    under_optimized: bool
    tolerance: float


def under_optimization(
    ranking: Ranking,
    fused_score: float | Sequence[float],
    *,
    tolerance: float = 0.0,
    metric: str | None = None,
) -> UnderOptimization:
    """Compare a multimodal model's held-out score with the best unimodal score of ``ranking``.

    The paper's under-optimization is a multimodal model that scores *below* its best unimodal
    counterpart. The comparison is fair only when the unimodal models of the ranking were trained
    with the multimodal model's recipe and budget (not a cheap ranking budget: under-trained unimodal
    models hide the effect) and both are evaluated on the same samples.

    Args:
        ranking: the unimodal ranking (its ``scores`` are the unimodal scores; with several training
            seeds, their means).
        fused_score: the multimodal model's score in the ranking's metric, or one score per training
            seed (their mean is compared).
        tolerance: ``under_optimized`` is ``gap > tolerance``; e.g. ``0.01`` ignores a shortfall of
            one accuracy point or less.
        metric: if given, the metric ``fused_score`` is in; it must be the ranking's.
    """
    if not isinstance(ranking, Ranking):
        raise TypeError(f"under_optimization needs a pdmp.Ranking, got {type(ranking).__name__} {ranking!r}")
    if metric is not None and metric != ranking.metric:
        raise ValueError(
            f"fused_score is in metric {metric!r} but the ranking's scores are in {ranking.metric!r}; "
            "compare scores of the same metric"
        )
    if isinstance(fused_score, np.ndarray) and fused_score.ndim == 0:
        fused_score = fused_score[()]
    if isinstance(fused_score, (str, bytes)) or (
        not isinstance(fused_score, Iterable) and not isinstance(fused_score, (int, float, np.integer, np.floating))
    ):
        raise TypeError(f"fused_score must be a number or a list of numbers, got {type(fused_score).__name__}")
    values = (
        [check_number(value, name="fused_score entry") for value in fused_score]
        if isinstance(fused_score, Iterable)
        else [check_number(fused_score, name="fused_score")]
    )
    if not values:
        raise ValueError("fused_score is empty; pass the multimodal model's score (or one per training seed)")
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"fused_score must be finite, got {fused_score!r}")
    margin = check_non_negative_finite(tolerance, name="tolerance")
    fused = float(np.mean(values))
    best = ranking.scores[ranking.dominant]
    gap = best - fused
    return UnderOptimization(
        metric=ranking.metric,
        fused_score=fused,
        best_modality=ranking.dominant,
        best_unimodal_score=best,
        gap=gap,
        under_optimized=gap > margin,
        tolerance=margin,
    )


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
    bootstrap is available; unpaired ones are ranked by their scores. ``logits`` are 2-D
    (samples, classes); a label at or above the number of columns is refused.
    """
    options = check_ranking_options(
        metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin, budget=budget
    )
    names = check_modality_names(logits.keys(), where="rank_unimodal_outputs logits")
    check_same_modalities(labels.keys(), names, where="rank_unimodal_outputs labels")
    first = np.asarray(labels[names[0]])
    paired = all(np.asarray(labels[n]).shape == first.shape and np.array_equal(labels[n], first) for n in names)
    if paired:
        return rank_modalities(
            logits,
            first,
            metric=metric,
            n_bootstrap=options.n_bootstrap,
            seed=options.seed,
            warn_margin=options.warn_margin,
            budget=options.budget,
        )
    if options.n_bootstrap:
        raise ValueError(
            "n_bootstrap needs paired validation sets (same samples and labels for every modality); "
            "pass paired val data or n_bootstrap=0"
        )
    scores = {}
    for name in names:
        predicted = to_class_predictions(logits[name], name=f"logits[{name!r}]")
        width = np.shape(logits[name])[1] if np.ndim(logits[name]) == 2 else None
        y = check_labels(labels[name], num_classes=width, name=f"labels[{name!r}]")
        check_same_length({f"labels[{name!r}]": y, f"logits[{name!r}]": predicted}, where="rank_unimodal_outputs")
        if y.size == 0:
            raise ValueError(f"rank_unimodal_outputs: labels[{name!r}] is empty; pass at least one validation sample")
        scores[name] = _score(options.metric_fn, y, predicted, name)
    # The metric itself (not its name) goes on: a callable's name cannot be resolved back to it.
    return rank_modalities(scores=scores, metric=metric, warn_margin=options.warn_margin, budget=options.budget)


@dataclass(frozen=True)
class TrainingCurve:
    """Per-epoch training curve of one unimodal model: entry ``e`` of every field is epoch ``e``.

    Attributes:
        train_loss: mean cross-entropy per training sample over the epoch (each mini-batch's loss as
            trained, before its update, weighted by the batch size; Keras: its ``loss``, which also
            holds any regularisation losses the model adds).
        train_accuracy: fraction of the epoch's training samples classified correctly while training
            (in training mode, before each step's update; dropout on).
        val_loss: cross-entropy on the whole validation set after the epoch (evaluation mode).
        val_accuracy: accuracy on the whole validation set after the epoch (evaluation mode).
        lr: learning rate during the epoch, at its first step (torch: of the first parameter group;
            Keras: a ``LearningRateSchedule``'s value at that step).
    """

    train_loss: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    val_loss: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    lr: tuple[float, ...]


@dataclass(frozen=True)
class UnimodalReport:
    """What an adapter's ``rank_unimodal`` trained, besides the ranking (``return_details=True``).

    Shared by :func:`pdmp.backends.torch.rank_unimodal` and :func:`pdmp.backends.keras.rank_unimodal`.

    Attributes:
        ranking: the ranking ``rank_unimodal`` returns without details (over several training
            seeds: the combined one, with ``seed_scores`` and ``seed_agreement``).
        seeds: the training seeds, in training order.
        rankings: per training seed, the ranking of that seed's models alone.
        models: per training seed, per modality, the trained model (torch: an ``nn.Module`` in
            evaluation mode on the training device; Keras: the compiled ``keras.Model``).
        val_logits: per training seed, per modality, the model's validation logits
            ``(samples, classes)`` as float64 NumPy arrays (what the ranking was computed from).
        val_labels: per modality, the validation labels.
        curves: per training seed, per modality, the per-epoch :class:`TrainingCurve`.
    """

    ranking: Ranking
    seeds: tuple[int, ...]
    rankings: dict[int, Ranking]
    models: dict[int, dict[str, Any]]
    val_logits: dict[int, dict[str, np.ndarray]]
    val_labels: dict[str, np.ndarray]
    curves: dict[int, dict[str, TrainingCurve]]


def rank_training_seeds(
    logits: Mapping[int, Mapping[str, ArrayLike]],
    labels: Mapping[str, ArrayLike],
    *,
    budget: Mapping[str, Any],
    several: bool,
    metric: str | Metric = "accuracy",
    n_bootstrap: int = 0,
    warn_margin: float = 0.01,
    stacklevel: int = 3,
) -> tuple[Ranking, dict[int, Ranking]]:
    """The adapters' last step of ``rank_unimodal``: rank each training seed's models, then combine.

    Args:
        logits: per training seed (in training order), per modality, the validation logits.
        labels: per modality, the validation labels.
        budget: what every seed's training cost; each seed's ranking records ``seed`` (one seed) or
            ``seeds`` (the list, when ``several``).
        several: the caller asked for ``seeds=``: the per-seed rankings are combined by
            :func:`combine_rankings` (one :class:`RankingWarning` for the combination, none per seed);
            otherwise the single seed's ranking is returned as it is.
        metric, n_bootstrap, warn_margin: as in :func:`rank_modalities`; each seed's bootstrap is
            seeded by that training seed.
        stacklevel: where the combination's warning points (the default: the caller's caller).

    Returns:
        The ranking and, per training seed, that seed's own ranking.
    """
    seeds = list(logits)
    per_seed: dict[int, Ranking] = {}
    for training_seed in seeds:
        extra = {"seeds": seeds} if several else {"seed": training_seed}
        with warnings.catch_warnings():
            if several:
                warnings.simplefilter("ignore", RankingWarning)  # one warning for the combination below
            per_seed[training_seed] = rank_unimodal_outputs(
                logits[training_seed],
                labels,
                budget={**budget, **extra},
                metric=metric,
                n_bootstrap=n_bootstrap,
                seed=training_seed,
                warn_margin=warn_margin,
            )
    if not several:
        return per_seed[seeds[0]], per_seed
    ranking = combine_rankings([per_seed[s] for s in seeds])
    if ranking.margin < warn_margin:
        warnings.warn(
            f"modalities {ranking.order[0]!r} and {ranking.order[1]!r} are within {ranking.margin:.4g} "
            f"{ranking.metric} on average over the training seeds (below warn_margin={warn_margin}); "
            "the dominant modality is uncertain, evaluate on more held-out samples or train longer",
            RankingWarning,
            stacklevel=stacklevel,
        )
    return ranking, per_seed


def factory_passes_lr(factory: Callable[..., Any], lr: float | None, *, position: int, own_form: str = "") -> bool:
    """Whether an optimizer factory is called with ``lr`` as positional argument ``position``.

    A factory with a positional parameter at ``position`` receives ``lr``; without ``lr`` that
    parameter must have a default, else the factory cannot be called (raises ``ValueError``; ``own_form``,
    e.g. ``"f(params)"``, is the form it names for a factory that sets its own). A factory without one
    sets its own learning rate. Factories without a signature get ``lr`` when it is given.
    """
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature (some builtins): trust what the caller passed
        return lr is not None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return lr is not None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) <= position:
        return False
    if lr is None and positional[position].default is inspect.Parameter.empty:
        raise ValueError(
            f"the optimizer factory takes a learning rate ({positional[position].name!r}): pass lr=, "
            f"or give a factory {own_form + ' ' if own_form else ''}that sets its own"
        )
    return lr is not None


def warn_unused_lr(lr: float | None, used: float, *, takes_lr: str, rel_tol: float = 1e-9) -> None:
    """Warn (at the adapter's caller) that ``lr=`` was given but the optimizer factory set ``used`` instead.

    ``takes_lr`` is the factory form that would take it, e.g. ``"f(lr)"``; ``rel_tol`` the precision
    the framework keeps the rate in.
    """
    if lr is not None and not math.isclose(used, lr, rel_tol=rel_tol):
        warnings.warn(
            f"lr={lr!r} is not used: the optimizer factory sets its own learning rate ({used!r}); "
            f"drop lr= or make the factory take it, {takes_lr}",
            UserWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class FrameworkExamples:
    """What an adapter's ``rank_unimodal`` errors show as the fix, in its framework's terms.

    Attributes:
        model: a model factory, e.g. ``"lambda: nn.Linear(16, classes)"``.
        optimizer: what an optimizer factory must return, e.g. ``"a torch optimizer"``.
        optimizer_factory: an optimizer factory, the recipe of a multimodal model.
        decay_factory: an optimizer factory that sets its own weight decay.
    """

    model: str
    optimizer: str
    optimizer_factory: str
    decay_factory: str


def check_optimizer_choice(
    optimizer: Any, lr: Any, weight_decay: Any, *, known: Mapping[str, Any], examples: FrameworkExamples
) -> tuple[dict[str, Any], dict[str, float]]:
    """Check an adapter's ``optimizer``, ``lr`` and ``weight_decay`` together (a name among ``known``, or a
    factory); nothing is built.

    Returns:
        What the budget records of them: ``lr``, ``optimizer`` and ``weight_decay`` (when given) for a
        named optimizer, the factory's name for a factory (the adapter adds what it builds); and the
        named optimizer's options (``{"weight_decay": ...}`` or none).
    """
    if isinstance(optimizer, str):
        if optimizer not in known:
            raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(known)}, or pass a callable")
        if lr is None:
            raise ValueError(f"optimizer={optimizer!r} needs a learning rate: pass lr=, e.g. lr=1e-3")
        options = {}
        if weight_decay is not None:
            options["weight_decay"] = check_non_negative_finite(weight_decay, name="weight_decay")
        return {"lr": float(lr), "optimizer": optimizer, **options}, options
    if not callable(optimizer):
        raise TypeError(
            f"optimizer must be a name or a callable returning {examples.optimizer}, got {optimizer!r}; "
            f"e.g. optimizer={examples.optimizer_factory}"
        )
    if weight_decay is not None:
        raise ValueError(
            f"weight_decay={weight_decay!r} goes with a named optimizer; your optimizer factory sets its own, "
            f"e.g. {examples.decay_factory}"
        )
    return {"optimizer": getattr(optimizer, "__name__", type(optimizer).__name__)}, {}


#: What an adapter's ``train_one(seed, name, description)`` returns for one unimodal model: its
#: validation logits ``(samples, classes)``, the trained model, its curve (may be ``None`` without
#: details), and the number of training samples it used.
TrainedUnimodal = tuple[np.ndarray, Any, TrainingCurve | None, int]


@dataclass(frozen=True)
class UnimodalCall:
    """The checked arguments of an adapter's ``rank_unimodal`` (see :func:`check_rank_unimodal_call`),
    and the framework-free steps around the adapter's training: the paired-validation check, the loop
    over training seeds and modalities, the budget record, the ranking and the report."""

    names: tuple[str, ...]
    seeds: tuple[int, ...]
    several: bool
    epochs: int
    subset: float
    batch_size: int
    metric: str | Metric
    n_bootstrap: int
    warn_margin: float
    progress: bool
    return_details: bool

    def check_paired(self, labels: Mapping[str, ArrayLike]) -> None:
        """Refuse ``n_bootstrap`` with unpaired validation labels before any model trains."""
        first = np.asarray(labels[self.names[0]])
        if self.n_bootstrap and not all(np.array_equal(labels[name], first) for name in self.names):
            # The core would refuse it too, but only after every model had trained.
            raise ValueError(
                "n_bootstrap needs paired validation sets (same samples and labels for every modality); "
                "pass paired val data or n_bootstrap=0"
            )

    def run(
        self,
        train_one: Callable[[int, str, str], TrainedUnimodal],
        labels: Mapping[str, np.ndarray],
        *,
        backend: str,
        recipe: Mapping[str, Any],
    ) -> Ranking | UnimodalReport:
        """Train every modality once per training seed, then rank (and report, with details).

        ``train_one(seed, name, description)`` trains the model of ``name`` with ``seed``;
        ``description`` (``"rank audio (1/2)"``, with the seed when there are several) is for its
        progress output. The budget records ``backend``, the epochs, subset, training samples, batch
        size and ``recipe`` (the optimizer's and scheduler's settings).
        """
        logits: dict[int, dict[str, np.ndarray]] = {seed: {} for seed in self.seeds}
        models: dict[int, dict[str, Any]] = {seed: {} for seed in self.seeds}
        curves: dict[int, dict[str, TrainingCurve]] = {seed: {} for seed in self.seeds}
        train_samples: dict[str, int] = {}
        total = len(self.names) * len(self.seeds)
        for seed_index, seed in enumerate(self.seeds):
            for index, name in enumerate(self.names):
                label = f"{name}, seed {seed}" if self.several else name
                description = f"rank {label} ({seed_index * len(self.names) + index + 1}/{total})"
                output, model, curve, train_samples[name] = train_one(seed, name, description)
                logits[seed][name] = np.asarray(output, dtype=np.float64)
                if self.return_details:
                    assert curve is not None
                    models[seed][name] = model
                    curves[seed][name] = curve
        budget = {
            "backend": backend,
            "epochs": self.epochs,
            "subset": self.subset,
            "train_samples": train_samples,
            "batch_size": self.batch_size,
            **recipe,
        }
        ranking, per_seed = rank_training_seeds(
            logits,
            labels,
            budget=budget,
            several=self.several,
            metric=self.metric,
            n_bootstrap=self.n_bootstrap,
            warn_margin=self.warn_margin,
            stacklevel=4,
        )
        if not self.return_details:
            return ranking
        return UnimodalReport(
            ranking=ranking,
            seeds=self.seeds,
            rankings=per_seed,
            models=models,
            val_logits=logits,
            val_labels=dict(labels),
            curves=curves,
        )


def check_rank_unimodal_call(
    factories: Mapping[str, Any],
    train: Mapping[str, Any],
    val: Mapping[str, Any],
    *,
    seed: Any,
    seeds: Any,
    progress: Any,
    return_details: Any,
    examples: FrameworkExamples,
    **request: Any,
) -> UnimodalCall:
    """Check the framework-free arguments of an adapter's ``rank_unimodal`` before anything is built.

    The training seeds (:func:`check_training_seeds`); ``request``, the arguments of
    :func:`check_unimodal_request` (``epochs``, ``subset``, ``batch_size``, ``lr``, ``metric``,
    ``n_bootstrap``, ``warn_margin``; ``lr`` may be ``None`` for an optimizer factory that sets its
    own); that every factory is callable (the error shows ``examples.model`` as the fix); and
    ``return_details`` and ``progress``.
    """
    training_seeds = check_training_seeds(seed, seeds)
    names, epochs, batch_size = check_unimodal_request(
        factories, train, val, **request, seed=training_seeds[0], lr_optional=True
    )
    for name in names:
        if not callable(factories[name]):
            raise TypeError(
                f"factories[{name!r}] is a {type(factories[name]).__name__}, not a callable; pass a function "
                f"returning a fresh model, e.g. {examples.model}"
            )
    return_details = check_bool(return_details, name="return_details")
    progress = check_bool(progress, name="progress")
    return UnimodalCall(
        names=names,
        seeds=training_seeds,
        several=seeds is not None,
        epochs=epochs,
        subset=float(request["subset"]),
        batch_size=batch_size,
        metric=request["metric"],
        n_bootstrap=request["n_bootstrap"],
        warn_margin=request["warn_margin"],
        progress=progress,
        return_details=return_details,
    )
