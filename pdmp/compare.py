"""Does prioritising pay on *your* model? Candidates x seeds, paired statistics, a table. Framework-free.

You bring the training: a function ``train(policy, seed, **options) -> {"val_acc": ..., "test_acc": ...}``
written with any framework (apply ``policy`` with the torch ``Modulator`` or the Keras
``ModulatedModel``; start every candidate of a seed from the same weights and data order). The
library runs every candidate on every seed, saves each finished run to a JSON file (an interrupted
study resumes from it), and reports mean ± sd and paired differences against a reference candidate
(default: plain joint training) with paired Student-t intervals and the exact sign-flip test
(:mod:`pdmp.stats`)::

    study = pdmp.compare(train, pdmp.default_candidates(ranking), seeds=range(5), path="study.json")
    print(study.to_markdown("test_acc"))

:func:`default_candidates` builds the four candidates that answer the question: joint training, PDMP,
uniform scaling at PDMP's ``gamma_p`` (is it just a larger learning rate?) and inverse PDMP (does the
direction matter?).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import check_non_negative_int, check_number, check_sequence, parse_json
from pdmp.controls import InversePDMP, UniformScaling
from pdmp.policies import PDMP, CoefficientPolicy, NoModulation, policy_from_config
from pdmp.ranking import Ranking
from pdmp.stats import PairedDifference, paired_difference, seeds_needed

__all__ = [
    "APPLIED_KEY",
    "AppliedRecord",
    "Candidate",
    "Study",
    "StudyError",
    "TrainFunction",
    "compare",
    "default_candidates",
    "run_environment",
]

#: The one non-numeric entry a train function may return beside its metrics: what the policy actually
#: applied during the run (:meth:`AppliedRecord.to_dict`), so that a policy that never moved a coefficient
#: is told apart from a miswired one.
APPLIED_KEY = "applied"

#: ``train(policy, seed, **candidate.options) -> metrics``; extra keywords (``budget``) come from :mod:`pdmp.search`.
TrainFunction = Callable[..., Mapping[str, float]]

STUDY_FORMAT = "pdmp-study/1"


class StudyError(RuntimeError):
    """A training run of a study failed or returned unusable metrics; finished runs stay saved."""


@dataclass(frozen=True)
class Candidate:
    """One way of training the multimodal model: a policy plus options for the user's train function.

    ``options`` are passed to ``train`` as keyword arguments (e.g. ``{"lr_scale": 5.0}`` for joint
    training at a larger learning rate); they must be JSON-serialisable. ``tuned_on`` lists the seeds
    a tuned candidate was chosen on: :func:`compare` refuses to evaluate it on those seeds.
    ``controls`` names the candidates of the same study this one must beat for its mechanism to be
    credited (PDMP's are uniform scaling and inverse PDMP): :meth:`Study.to_markdown` reports each pair
    (see :meth:`Study.decisive_pairs`).
    """

    name: str
    policy: CoefficientPolicy
    options: Mapping[str, Any] = field(default_factory=dict)
    tuned_on: tuple[int, ...] = ()
    controls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"candidate name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.policy, CoefficientPolicy):
            raise TypeError(
                f"candidate {self.name!r}: policy must be a pdmp policy (e.g. pdmp.PDMP(...), pdmp.NoModulation(...)), "
                f"got {type(self.policy).__name__}"
            )
        if not isinstance(self.options, Mapping) or not all(isinstance(key, str) for key in self.options):
            raise TypeError(f"candidate {self.name!r}: options must be a dict with string keys, got {self.options!r}")
        try:
            json.dumps(dict(self.options), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"candidate {self.name!r}: options {dict(self.options)!r} are not JSON-serialisable ({error}); "
                "use numbers, strings, lists and dicts"
            ) from None
        object.__setattr__(self, "options", dict(self.options))
        if isinstance(self.tuned_on, str | int) or not isinstance(self.tuned_on, Iterable):
            raise TypeError(f"candidate {self.name!r}: tuned_on must be a sequence of seeds, got {self.tuned_on!r}")
        object.__setattr__(
            self, "tuned_on", tuple(check_non_negative_int(s, name=f"{self.name} tuned_on seed") for s in self.tuned_on)
        )
        if isinstance(self.controls, str) or not isinstance(self.controls, Iterable):
            raise TypeError(
                f"candidate {self.name!r}: controls must be a sequence of candidate names, e.g. ('uniform',), "
                f"got {self.controls!r}"
            )
        controls = tuple(self.controls)
        if not all(isinstance(c, str) and c.strip() for c in controls) or self.name in controls:
            raise ValueError(
                f"candidate {self.name!r}: controls must name other candidates of the study, got {controls!r}"
            )
        object.__setattr__(self, "controls", controls)

    def fresh_policy(self) -> CoefficientPolicy:
        """A new policy equal to :attr:`policy`, so no state can leak from one run into the next."""
        return policy_from_config(self.policy.get_config())

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "policy": self.policy.get_config(),
            "options": dict(self.options),
            "tuned_on": list(self.tuned_on),
        }
        if self.controls:  # omitted when empty: study files written before controls existed stay equal
            data["controls"] = list(self.controls)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        if not isinstance(data, Mapping):
            raise TypeError(f"a candidate must be a dict, got {data!r}")
        return cls(
            name=data["name"],
            policy=policy_from_config(data["policy"]),
            options=data.get("options", {}),
            tuned_on=data.get("tuned_on", ()),
            controls=data.get("controls", ()),
        )

    def configuration(self) -> str:
        """The candidate's training configuration without its name (policy, options), as canonical JSON:
        two candidates with the same configuration train the same model."""
        return json.dumps({"policy": self.policy.get_config(), "options": dict(self.options)}, sort_keys=True)


def default_candidates(
    ranking: Ranking, *, gamma_p: float = 10.0, gamma_r: float = 0.5, warmup: int = 0, **schedule: Any
) -> list[Candidate]:
    """joint, PDMP(``gamma_p``, ``gamma_r``), uniform scaling at ``gamma_p``, inverse PDMP; same schedule.

    Uniform scaling at ``gamma_p`` gives every encoder what PDMP gives the dominant one: if it does as
    well as PDMP, the gain is a learning-rate effect. ``schedule`` (``unit``, ``ramp``, ``end``) goes to
    every policy.
    """
    options = {"warmup": warmup, **schedule}
    return [
        Candidate("joint", NoModulation(ranking.order)),
        Candidate(
            "pdmp",
            PDMP.from_ranking(ranking, gamma_p=gamma_p, gamma_r=gamma_r, **options),
            controls=("uniform", "inverse"),
        ),
        Candidate("uniform", UniformScaling(ranking.order, gamma_p, **options)),
        Candidate("inverse", InversePDMP.from_ranking(ranking, gamma_p=gamma_p, gamma_r=gamma_r, **options)),
    ]


def _check_candidates(candidates: Iterable[Candidate]) -> list[Candidate]:
    if isinstance(candidates, Candidate):
        raise TypeError(
            f"candidates must be a list of pdmp.Candidate objects; for one candidate write [{candidates.name!r} ...]"
        )
    result = list(
        check_sequence(candidates, name="candidates", example="pdmp.default_candidates(ranking)", allow_empty=True)
    )
    if not result:
        raise ValueError("no candidates to compare; e.g. pdmp.default_candidates(ranking)")
    for candidate in result:
        if not isinstance(candidate, Candidate):
            raise TypeError(f"candidates must be pdmp.Candidate objects, got {candidate!r}")
    names = [candidate.name for candidate in result]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"duplicate candidate name(s) {duplicated}; give every candidate a distinct name")
    return result


def _same_configuration(candidates: Sequence[Candidate]) -> list[list[str]]:
    """Groups (of two or more names) of candidates that train the same configuration under other names."""
    groups: dict[str, list[str]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.configuration(), []).append(candidate.name)
    return [names for names in groups.values() if len(names) > 1]


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    result = [
        check_non_negative_int(seed, name="seed")
        for seed in check_sequence(seeds, name="seeds", example="range(5)", allow_empty=True)
    ]
    if not result:
        raise ValueError("no seeds given; pass e.g. seeds=range(5) (3-10 seeds for a verdict)")
    if len(set(result)) != len(result):
        raise ValueError(f"duplicate seeds in {result}; each seed is one paired replicate")
    return result


def _check_metrics(metrics: Any, candidate: str, seed: int) -> dict[str, float]:
    where = f"train(...) for candidate {candidate!r}, seed {seed}"
    if not isinstance(metrics, Mapping) or not metrics:
        raise StudyError(
            f"{where} returned {metrics!r}; it must return a non-empty dict of metric name -> number, "
            "e.g. {'val_acc': 0.81, 'test_acc': 0.79}"
        )
    result = {}
    for key, value in metrics.items():
        if key == APPLIED_KEY:
            continue  # checked by _check_applied
        if not isinstance(key, str):
            raise StudyError(f"{where} returned a metric named {key!r}; metric names must be strings")
        if isinstance(value, bool | str):
            raise StudyError(f"{where} returned {key}={value!r}, which is not a number")
        try:
            number = check_number(value, name=f"metric {key}")
        except TypeError:
            raise StudyError(f"{where} returned {key}={value!r}, which is not a number") from None
        except ValueError as error:  # beyond float range
            raise StudyError(f"{where} returned {key}: {error}") from None
        if not math.isfinite(number):
            raise StudyError(
                f"{where} returned {key}={value!r}; metrics must be finite (a diverged run should report its "
                "accuracy, not a NaN loss)"
            )
        result[key] = number
    if not result:
        raise StudyError(f"{where} returned no metric beside {APPLIED_KEY!r}; return e.g. {{'val_acc': 0.81}}")
    return result


def _check_applied(applied: Any, where: str) -> dict[str, dict[str, list[float]]]:
    """An :meth:`AppliedRecord.to_dict` value: kind -> modality -> [min, max], finite numbers."""
    problem = f"{where}: {APPLIED_KEY!r} must be AppliedRecord.to_dict() (kind -> modality -> [min, max])"
    if not isinstance(applied, Mapping):
        raise StudyError(f"{problem}, got {applied!r}")
    result: dict[str, dict[str, list[float]]] = {}
    for kind, ranges in applied.items():
        if kind not in AppliedRecord.KINDS or not isinstance(ranges, Mapping):
            raise StudyError(f"{problem}; got the entry {kind!r}: {ranges!r} (kinds: {', '.join(AppliedRecord.KINDS)})")
        result[kind] = {}
        for modality, bounds in ranges.items():
            if (
                not isinstance(modality, str)
                or not isinstance(bounds, Sequence)
                or isinstance(bounds, str)
                or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
                or bounds[0] > bounds[1]
            ):
                raise StudyError(f"{problem}; got {kind}[{modality!r}] = {bounds!r}")
            result[kind][modality] = [float(bounds[0]), float(bounds[1])]
    return result


class AppliedRecord:
    """The range of what a policy applied during one run: each modality's coefficient and auxiliary
    (unimodal) loss weight, smallest and largest over the taken optimizer steps.

    Feed it once per step from the training loop (``record.update(modulator.coefficients,
    modulator.unimodal_loss_weights)``) and return ``record.to_dict()`` under :data:`APPLIED_KEY` beside
    the metrics; :meth:`Study.to_markdown` then says which candidates never moved a coefficient from 1
    and never weighted an auxiliary loss, i.e. trained exactly as joint training would.
    """

    KINDS = ("coefficients", "unimodal_loss_weights")

    def __init__(self) -> None:
        self._ranges: dict[str, dict[str, list[float]]] = {kind: {} for kind in self.KINDS}

    def update(
        self, coefficients: Mapping[str, float], unimodal_loss_weights: Mapping[str, float] | None = None
    ) -> None:
        for kind, values in zip(self.KINDS, (coefficients, unimodal_loss_weights or {}), strict=True):
            for modality, value in values.items():
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError(f"{kind}[{modality!r}] = {value!r} is not finite; the policy is broken")
                low, high = self._ranges[kind].setdefault(str(modality), [number, number])
                self._ranges[kind][str(modality)] = [min(low, number), max(high, number)]

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {kind: {m: list(bounds) for m, bounds in ranges.items()} for kind, ranges in self._ranges.items()}


def _applied_nothing(applied: Mapping[str, Mapping[str, Sequence[float]]]) -> bool:
    """True when every coefficient stayed 1 and no auxiliary loss got a nonzero weight."""
    coefficients = applied.get("coefficients", {})
    weights = applied.get("unimodal_loss_weights", {})
    return all(low == high == 1.0 for low, high in coefficients.values()) and all(
        low == high == 0.0 for low, high in weights.values()
    )


#: The fields a saved run may have (anything else means the file is not what it claims to be).
_RUN_FIELDS = frozenset({"candidate", "seed", "metrics", "wall_time_s", "environment", "train_options", "applied"})


class Study:
    """Results of candidates x seeds: ``runs[(candidate, seed)] = {"metrics": {...}, "wall_time_s": s, ...}``.

    A run also records ``train_options`` (what :func:`compare` passed besides the candidate's own options,
    e.g. the budget), ``environment`` (:func:`run_environment`) and, where the train function returned it,
    ``applied`` (:class:`AppliedRecord`). A run is identified by (candidate configuration, seed,
    train_options): a resumed study never reuses a run made under other train_options.
    """

    def __init__(self, candidates: Sequence[Candidate], seeds: Sequence[int], reference: str | None = None) -> None:
        self.candidates = _check_candidates(candidates)
        self.seeds = _check_seeds(seeds)
        names = [candidate.name for candidate in self.candidates]
        if reference is None:
            reference = names[0]
        if reference not in names:
            raise ValueError(f"unknown reference candidate {reference!r}; candidates: {', '.join(names)}")
        self.reference = reference
        self.runs: dict[tuple[str, int], dict[str, Any]] = {}

    # -- access ------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [candidate.name for candidate in self.candidates]

    def candidate(self, name: str) -> Candidate:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise ValueError(f"unknown candidate {name!r}; candidates: {', '.join(self.names)}")

    @property
    def metrics(self) -> list[str]:
        """Metric names in the order the first finished run returned them."""
        seen: dict[str, None] = {}
        for run in self.runs.values():
            seen.update(dict.fromkeys(run["metrics"]))
        return list(seen)

    @property
    def complete(self) -> bool:
        return all((name, seed) in self.runs for name in self.names for seed in self.seeds)

    def values(self, name: str, metric: str) -> dict[int, float]:
        """Seed -> value of ``metric`` for candidate ``name`` (finished runs only)."""
        self.candidate(name)
        if self.runs and metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r}; the train function returned {', '.join(self.metrics)}")
        return {
            seed: self.runs[(name, seed)]["metrics"][metric]
            for seed in self.seeds
            if (name, seed) in self.runs and metric in self.runs[(name, seed)]["metrics"]
        }

    def paired(
        self, name: str, metric: str, *, reference: str | None = None, higher_is_better: bool = True
    ) -> PairedDifference:
        """``name`` minus ``reference`` (default: the study's reference) over the seeds both finished."""
        reference = self.reference if reference is None else reference
        first, second = self.values(name, metric), self.values(reference, metric)
        seeds = [seed for seed in self.seeds if seed in first and seed in second]
        if not seeds:
            raise ValueError(f"no seed has finished runs of both {name!r} and {reference!r} with metric {metric!r}")
        return paired_difference(
            [first[s] for s in seeds], [second[s] for s in seeds], higher_is_better=higher_is_better
        )

    def decisive_pairs(self) -> list[tuple[str, str]]:
        """(candidate, control) pairs whose difference decides whether a candidate's mechanism pays.

        Each candidate's declared :attr:`Candidate.controls`; and, without the user asking, every PDMP
        candidate against every uniform-scaling and inverse-PDMP candidate in the study trained with the same
        options (is the gain the prioritisation, or only a larger step / any asymmetry?). A control trained
        otherwise (e.g. with modality dropout, or another learning rate) would mix two effects.
        """
        pairs: list[tuple[str, str]] = []
        for candidate in self.candidates:
            controls = list(candidate.controls)
            if isinstance(candidate.policy, PDMP) and type(candidate.policy) is PDMP:
                controls += [
                    other.name
                    for other in self.candidates
                    if isinstance(other.policy, UniformScaling | InversePDMP)
                    and dict(other.options) == dict(candidate.options)
                    and other.name not in controls
                ]
            pairs += [(candidate.name, control) for control in controls if control in self.names]
        return pairs

    def missing_controls(self) -> dict[str, list[str]]:
        """Candidate -> its declared controls that the study does not hold (the table says so)."""
        missing = {c.name: [name for name in c.controls if name not in self.names] for c in self.candidates}
        return {name: controls for name, controls in missing.items() if controls}

    def applied_nothing(self) -> list[str]:
        """Candidates (other than plain joint training) whose every recorded run kept all coefficients at 1
        and every auxiliary-loss weight at 0: in effect joint training (a rule that never fired, or a
        policy that was never wired in). Only runs whose train function returned :data:`APPLIED_KEY` count."""
        result = []
        for candidate in self.candidates:
            if type(candidate.policy) is NoModulation and not candidate.options:
                continue
            records = [
                run["applied"] for (name, _), run in self.runs.items() if name == candidate.name and "applied" in run
            ]
            if records and all(_applied_nothing(record) for record in records):
                result.append(candidate.name)
        return result

    def environments(self) -> dict[str, list[tuple[str, int]]]:
        """Each environment's signature (:func:`environment_signature`) -> the (candidate, seed) runs made in it."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for key in sorted(self.runs, key=lambda item: (item[1], item[0])):
            groups.setdefault(environment_signature(self.runs[key].get("environment")), []).append(key)
        return groups

    def wall_time(self, name: str) -> float:
        """Mean wall time of a candidate's runs, in seconds."""
        times = [run["wall_time_s"] for (candidate, _), run in self.runs.items() if candidate == name]
        return float(np.mean(times)) if times else float("nan")

    # -- reports -----------------------------------------------------------------------------------

    def rows(self, metric: str, *, reference: str | None = None, higher_is_better: bool = True) -> list[dict[str, Any]]:
        """One dict per candidate: n, mean, sd, the paired difference to ``reference`` (default: the
        study's), and wall time relative to the reference's."""
        reference = self.reference if reference is None else self.candidate(reference).name
        reference_time = self.wall_time(reference)
        rows = []
        for name in self.names:
            values = list(self.values(name, metric).values())
            row: dict[str, Any] = {
                "candidate": name,
                "n": len(values),
                "mean": float(np.mean(values)) if values else None,
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                # None (shown as "—") when either side has no finished run: wall_time is NaN then.
                "relative_wall_time": self.wall_time(name) / reference_time
                if reference_time > 0 and values and not math.isnan(self.wall_time(name))
                else None,
                "difference": None,
                "seeds_needed": None,
            }
            if name != reference and values:
                try:
                    diff = self.paired(name, metric, reference=reference, higher_is_better=higher_is_better)
                except ValueError:
                    diff = None
                if diff is not None:
                    row["difference"] = diff.to_dict()
                    if diff.sd is not None and not diff.significant:
                        row["seeds_needed"] = seeds_needed(diff.mean, diff.sd)
            rows.append(row)
        return rows

    def to_markdown(
        self,
        metric: str | None = None,
        *,
        reference: str | None = None,
        scale: float = 100.0,
        digits: int = 1,
        higher_is_better: bool = True,
    ) -> str:
        """A table: mean ± sd per candidate, paired difference to the reference, relative wall time.

        ``scale`` multiplies values for display (100: accuracy in points). The caption says which test
        the intervals come from and how many seeds a verdict needs.
        """
        metric = self._default_metric(metric)
        reference = self.reference if reference is None else self.candidate(reference).name
        scale = check_number(scale, name="scale")
        digits = check_non_negative_int(digits, name="digits")
        header = (
            f"| candidate | seeds | {metric} | minus {reference} [95% paired t-interval] | "
            "seeds for a verdict | wall time |"
        )
        lines = [header, "|---|---|---|---|---|---|"]
        for row in self.rows(metric, reference=reference, higher_is_better=higher_is_better):
            if row["mean"] is None:
                value = "—"
            elif row["sd"] is None:
                value = f"{scale * row['mean']:.{digits}f}"
            else:
                value = f"{scale * row['mean']:.{digits}f} ± {scale * row['sd']:.{digits}f}"
            diff = "(reference)" if row["candidate"] == reference else "—"
            if row["difference"] is not None:
                diff = PairedDifference.from_dict(row["difference"]).format(scale, digits)
            needed = "—"
            if row["difference"] is not None and row["difference"]["verdict"] == "no significant difference":
                if row["seeds_needed"]:
                    needed = f"~{row['seeds_needed']}"
                else:  # a mean difference of exactly 0 never becomes significant
                    needed = "> 1000" if row["difference"]["mean"] != 0 else "never"
            time_ratio = "—" if row["relative_wall_time"] is None else f"{row['relative_wall_time']:.2f}x"
            lines.append(f"| {row['candidate']} | {row['n']} | {value} | {diff} | {needed} | {time_ratio} |")
        decisive = [(name, control) for name, control in self.decisive_pairs() if reference not in (name, control)]
        if decisive:
            lines += ["", "| candidate | minus its control [95% paired t-interval] |", "|---|---|"]
            for name, control in decisive:
                try:
                    cell = self.paired(name, metric, reference=control, higher_is_better=higher_is_better).format(
                        scale, digits
                    )
                except ValueError:
                    cell = "— (no seed finished both)"
                lines.append(f"| {name} | minus {control}: {cell} |")
        lines += [
            "",
            f"Paired by seed; interval: paired Student-t, {len(self.seeds)} seed(s); p: exact two-sided sign-flip "
            "permutation test (its smallest possible value is 2/2^n, so it needs >= 6 seeds to fall below 0.05). "
            "A verdict needs >= 3 paired seeds and differences that are not identical on every seed (else 'no "
            "verdict'). 'seeds for a verdict': how many seeds would make the observed mean difference significant "
            "if its spread stayed the same.",
        ]
        for name, controls in self.missing_controls().items():
            lines += [
                "",
                f"**{name} is not set against its control(s) {', '.join(controls)}**: they are not in the study, so "
                "the table cannot tell its mechanism from what they control for (e.g. a larger step for every "
                "encoder).",
            ]
        idle = self.applied_nothing()
        if idle:
            lines += [
                "",
                f"**Applied nothing:** {', '.join(idle)} kept every coefficient at 1 and every auxiliary-loss weight "
                "at 0 on every recorded run, so trained as joint training does (a rule that never fired, or a "
                "policy not wired into the loop).",
            ]
        environments = self.environments()
        if len(environments) > 1:
            lines += ["", _mixed_environments_note(environments)]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str], metric: str | None = None, *, scale: float = 100.0) -> Path:
        """Per candidate: every seed's value and the mean with its paired interval to the reference (PNG)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:  # optional: the core needs NumPy only
            raise ImportError("Study.plot needs matplotlib: pip install matplotlib") from error
        metric = self._default_metric(metric)
        figure, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(self.names) + 2.2))
        positions = np.arange(len(self.names))[::-1]
        for position, name in zip(positions, self.names, strict=True):
            values = np.array(list(self.values(name, metric).values())) * scale
            axes[0].plot(values, np.full(values.size, position), "o", alpha=0.5, color="tab:blue")
            if values.size:
                axes[0].plot([values.mean()], [position], "|", markersize=18, color="black")
            if name != self.reference and values.size:
                diff = self.paired(name, metric)
                axes[1].plot([scale * diff.mean], [position], "o", color="black")
                if diff.interval is not None:
                    axes[1].plot([scale * v for v in diff.interval], [position, position], color="black")
        for axis in axes:
            axis.set_yticks(positions, self.names)
        axes[0].set(title=f"{metric} per seed (bar: mean)", xlabel=metric)
        axes[1].axvline(0.0, color="grey", linewidth=1)
        axes[1].set(title=f"minus {self.reference}: mean and 95% paired t-interval", xlabel=f"difference in {metric}")
        figure.tight_layout()
        target = Path(path)
        figure.savefig(target, dpi=90)
        plt.close(figure)
        return target

    def _default_metric(self, metric: str | None) -> str:
        if metric is not None:
            if self.runs and metric not in self.metrics:
                raise ValueError(f"unknown metric {metric!r}; the train function returned {', '.join(self.metrics)}")
            return metric
        if not self.metrics:
            raise ValueError("the study has no finished runs yet")
        return self.metrics[0]

    # -- persistence -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STUDY_FORMAT,
            "reference": self.reference,
            "seeds": list(self.seeds),
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "runs": [
                {"candidate": name, "seed": seed, **run}
                for (name, seed), run in sorted(self.runs.items(), key=lambda item: (item[0][1], item[0][0]))
            ],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the study as JSON, atomically (a crash mid-write leaves the previous file intact)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(text)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Study:
        """Read a study written by :meth:`save`; a corrupt file raises ValueError naming it."""
        source = Path(path)
        try:
            data = parse_json(source.read_text(), source=str(source))
            if not isinstance(data, dict) or data.get("format") != STUDY_FORMAT:
                raise ValueError(
                    f"not a pdmp study (format {data.get('format') if isinstance(data, dict) else None!r})"
                )
            study = cls([Candidate.from_dict(item) for item in data["candidates"]], data["seeds"], data["reference"])
            if not isinstance(data["runs"], list):
                raise ValueError(f"runs must be a list, got {type(data['runs']).__name__}")
            for run in data["runs"]:
                if not isinstance(run, dict):
                    raise ValueError(f"a run must be a dict, got {run!r}")
                unknown = sorted(set(run) - _RUN_FIELDS)
                if unknown:
                    raise ValueError(f"a run has unknown field(s) {unknown}; known: {sorted(_RUN_FIELDS)}")
                key = (run["candidate"], check_non_negative_int(run["seed"], name="run seed"))
                candidate = study.candidate(key[0])
                if key[1] not in study.seeds:
                    raise ValueError(
                        f"run of {key[0]!r} on seed {key[1]}, which the study's seeds {study.seeds} do not list"
                    )
                if key in study.runs:  # merged files can hold this; which copy is right cannot be told
                    raise ValueError(f"candidate {key[0]!r}, seed {key[1]} appears twice; keep one of the two runs")
                if key[1] in candidate.tuned_on:
                    raise ValueError(
                        f"candidate {key[0]!r} has a run on seed {key[1]}, which it was tuned on "
                        f"(tuned_on {list(candidate.tuned_on)}); its score there is optimistically biased"
                    )
                wall_time = run["wall_time_s"]
                if isinstance(wall_time, bool) or not isinstance(wall_time, int | float) or not wall_time >= 0:
                    raise ValueError(f"run {key}: wall_time_s must be a number >= 0, got {wall_time!r}")
                study.runs[key] = {
                    "metrics": _check_metrics(run["metrics"], key[0], key[1]),
                    "wall_time_s": float(wall_time),
                }
                for entry in ("environment", "train_options"):
                    if run.get(entry) is not None:
                        if not isinstance(run[entry], dict):
                            raise ValueError(f"run {key}: {entry} must be a dict, got {run[entry]!r}")
                        study.runs[key][entry] = run[entry]
                if run.get("applied") is not None:
                    study.runs[key]["applied"] = _check_applied(run["applied"], f"run {key}")
        except (OSError, KeyError, TypeError, ValueError, StudyError, RecursionError) as error:
            raise ValueError(
                f"cannot read study file {str(source)!r}: {error!r}; fix the entry named there, or move the file "
                "away to start the study afresh"
            ) from error
        return study


#: Frameworks whose versions a run records when the train function has imported them (never imported here).
_FRAMEWORKS = ("torch", "torchaudio", "tensorflow", "keras", "jax", "lightning")


#: CPU features that select different math kernels (and so other rounding) in NumPy, oneDNN and MKL.
_KERNEL_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`_KERNEL_FEATURES` it has (Linux; elsewhere the platform's
    processor string and no features)."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), [f for f in _KERNEL_FEATURES if f in flags]


def run_environment() -> dict[str, Any]:
    """What a run's numbers depend on besides the code and the seed: CPU, core count, platform, Python,
    NumPy and the versions of the frameworks already imported. ``host`` names the machine for the record.

    The same code and seed can give other numbers on another CPU or library build (other kernels, other
    summation orders), so :func:`compare` stores this with every run and :meth:`Study.to_markdown` says
    when a study's runs come from more than one environment.
    """
    frameworks = {
        name: str(getattr(sys.modules[name], "__version__", "unknown")) for name in _FRAMEWORKS if name in sys.modules
    }
    cpu, features = _cpu()
    environment: dict[str, Any] = {
        "cpu": cpu,
        "cpu_features": features,
        "cpus": os.cpu_count() or 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "frameworks": frameworks,
        "host": platform.node(),
        "arithmetic_variables": {name: os.environ[name] for name in _ARITHMETIC_VARIABLES if name in os.environ},
    }
    environment.update(_framework_threads())
    return environment


#: Environment variables that change a run's arithmetic when set (thread pools, kernel selection).
_ARITHMETIC_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "TF_ENABLE_ONEDNN_OPTS",
)


def _framework_threads() -> dict[str, Any]:
    """Thread counts and kernel level of the frameworks the train function imported (never imported here):
    the same seed gives other rounding, and after ten epochs other accuracies, at another thread count
    or kernel level (``benchmarks.reproduce`` measured both)."""
    found: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            found["torch_threads"] = int(torch.get_num_threads())
            found["torch_interop_threads"] = int(torch.get_num_interop_threads())
            found["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        except Exception:  # a partial or mocked torch: record what could be read
            pass
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:
        try:
            threading = tensorflow.config.threading
            found["tf_threads"] = [
                int(threading.get_intra_op_parallelism_threads()),
                int(threading.get_inter_op_parallelism_threads()),
            ]
        except Exception:
            pass
    return found


def environment_signature(environment: Mapping[str, Any] | None) -> str:
    """A short label of an environment, without the host name (fresh machines of one kind share it);
    ``"unrecorded"`` for runs saved before environments were recorded."""
    if not environment:
        return "unrecorded"
    frameworks = " ".join(f"{k} {v}" for k, v in sorted(dict(environment.get("frameworks", {})).items()))
    features = "+".join(environment.get("cpu_features", []))
    parts = [
        str(environment.get("cpu", "?")) + (f" ({features})" if features else ""),
        f"{environment.get('cpus', '?')} cpus",
        f"numpy {environment.get('numpy', '?')}",
    ]
    # Recorded only by newer runs; where recorded they select other kernels or summation orders.
    if "torch_threads" in environment:
        parts.append(f"torch {environment['torch_threads']} thread(s), {environment.get('torch_cpu_capability', '?')}")
    if "tf_threads" in environment:
        parts.append(f"tensorflow threads {environment['tf_threads']}")
    if environment.get("arithmetic_variables"):
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(dict(environment["arithmetic_variables"]).items())))
    return ", ".join(parts + ([frameworks] if frameworks else []))


def _mixed_environments_note(environments: Mapping[str, Sequence[tuple[str, int]]]) -> str:
    parts = []
    for signature, runs in environments.items():
        candidates = sorted({name for name, _ in runs})
        seeds = sorted({seed for _, seed in runs})
        parts.append(f"{signature}: {len(runs)} run(s) of {', '.join(candidates)} (seeds {', '.join(map(str, seeds))})")
    return (
        f"**Runs from {len(environments)} environments.** The same code and seed can give other numbers on "
        "another CPU or library build, and wall times are not comparable across them; a difference between "
        "candidates run in different environments includes that. " + "; ".join(parts) + "."
    )


def _check_resumable(
    stored: Study,
    train_options: Mapping[str, Any],
    path: str | os.PathLike[str],
    progress: bool | Callable[[str], None],
) -> None:
    """Refuse to resume from runs made under other ``train_options`` (another budget, another data
    fraction): their scores would be reported as if made under these."""
    unrecorded = 0
    for (name, seed), run in sorted(stored.runs.items(), key=lambda item: (item[0][1], item[0][0])):
        if "train_options" not in run:
            unrecorded += 1
            continue
        if run["train_options"] != train_options:
            keys = sorted(set(run["train_options"]) | set(train_options))
            absent = object()  # a sentinel no stored option can equal
            differing = [k for k in keys if run["train_options"].get(k, absent) != train_options.get(k, absent)]
            raise ValueError(
                f"study file {str(path)!r}: the run of {name!r} on seed {seed} was made with train_options "
                f"{run['train_options']!r}, this call passes {dict(train_options)!r} "
                f"(differs in: {', '.join(differing)}); "
                "its score would be reported under the new options. Resume with the same train_options, "
                "or use a new path"
            )
    if unrecorded:
        _report(
            f"note: {unrecorded} run(s) in {str(path)!r} were saved without their train_options, so whether they "
            "were made under these cannot be checked; they are reused as they are",
            progress,
        )


def _check_progress(progress: Any) -> None:
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(
            f"progress must be True (print to stderr), False (silent) or a function taking a message, got {progress!r}"
        )


def _report(message: str, progress: bool | Callable[[str], None]) -> None:
    if progress is True:
        print(message, file=sys.stderr, flush=True)
    elif callable(progress):
        progress(message)


def compare(
    train: TrainFunction,
    candidates: Iterable[Candidate],
    seeds: Iterable[int],
    *,
    reference: str | None = None,
    path: str | os.PathLike[str] | None = None,
    progress: bool | Callable[[str], None] = True,
    train_options: Mapping[str, Any] | None = None,
) -> Study:
    """Run ``train(candidate.fresh_policy(), seed, **candidate.options)`` for every candidate and seed.

    Runs go seed by seed (every candidate of seed 0, then of seed 1, ...), so an interrupted study
    already holds complete pairs. With ``path`` every finished run is saved at once, and a second
    call with the same candidates resumes: finished runs are not repeated (more seeds and more
    candidates may be added; a candidate whose configuration changed, or one left out, is refused,
    so that no saved run is lost or mislabelled; a candidate added later was timed at another
    time, so its wall-time ratios are less comparable). ``reference`` (default: the first candidate) is what the paired
    differences subtract. ``train_options`` are passed to every call (e.g. ``{"budget": 10}``).

    Raises :class:`StudyError` when ``train`` raises or returns no usable metrics (the runs finished
    before it stay saved); ValueError when a candidate was tuned on one of ``seeds``.
    """
    if not callable(train):
        raise TypeError(f"train must be a function train(policy, seed, **options) -> metrics, got {train!r}")
    _check_progress(progress)
    candidates = _check_candidates(candidates)
    seeds = _check_seeds(seeds)
    for candidate in candidates:
        leaked = sorted(set(candidate.tuned_on) & set(seeds))
        if leaked:
            raise ValueError(
                f"candidate {candidate.name!r} was tuned on seed(s) {leaked}, which are also evaluation seeds; "
                "evaluate on seeds it was not tuned on (its tuning runs are optimistically biased)"
            )
    if train_options is not None and (
        not isinstance(train_options, Mapping) or not all(isinstance(key, str) for key in train_options)
    ):
        raise TypeError(f"train_options must be a dict with string keys, e.g. {{'budget': 10}}, got {train_options!r}")
    extra = dict(train_options or {})
    try:  # recorded with every run and compared on resume, so it must survive the JSON file unchanged
        recorded_options = json.loads(json.dumps(extra, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"train_options {extra!r} are not JSON-serialisable ({error}); use numbers and strings"
        ) from None
    for names in _same_configuration(candidates):
        message = (
            f"candidates {', '.join(map(repr, names))} have the same policy and options: each is trained "
            "separately and they differ only by run-to-run noise; drop all but one unless that is the point"
        )
        warnings.warn(message, stacklevel=2)
        _report(f"note: {message}", progress)
    study = Study(candidates, seeds, reference)
    if path is not None and Path(path).exists():
        stored = Study.load(path)
        given = {c.name: c.to_dict() for c in candidates}
        saved = {c.name: c.to_dict() for c in stored.candidates}
        changed = sorted(name for name in saved if given.get(name) != saved[name])
        if changed:
            raise ValueError(
                f"study file {str(path)!r} holds another candidate set (differs in: {', '.join(changed)}); "
                "resume with the same candidates (new ones may be added), or use a new path"
            )
        _check_resumable(stored, recorded_options, path, progress)
        study.runs.update(stored.runs)
        study.seeds = seeds + [seed for seed in stored.seeds if seed not in seeds]
    todo = [(c, s) for s in seeds for c in candidates if (c.name, s) not in study.runs]
    done = sum(1 for c in candidates for s in seeds) - len(todo)
    if done:
        _report(f"resuming {str(path)!r}: {done} run(s) already finished, {len(todo)} to go", progress)
        here = environment_signature(run_environment())
        elsewhere = sorted(set(study.environments()) - {here})
        if elsewhere and todo:
            _report(
                f"note: finished runs come from another environment ({'; '.join(elsewhere)}) than this one ({here}); "
                "the same seed can give other numbers there, so the table will say the runs are mixed",
                progress,
            )
    for index, (candidate, seed) in enumerate(todo, start=1):
        started = time.perf_counter()
        options = {**extra, **candidate.options}
        try:
            metrics = train(candidate.fresh_policy(), seed, **options)
        except Exception as error:
            where = f"; the {len(study.runs)} finished run(s) are saved in {str(path)!r}" if path is not None else ""
            raise StudyError(
                f"train(...) raised for candidate {candidate.name!r}, seed {seed}: {error!r}{where}"
            ) from error
        elapsed = time.perf_counter() - started
        where = f"train(...) for candidate {candidate.name!r}, seed {seed}"
        run: dict[str, Any] = {
            "metrics": _check_metrics(metrics, candidate.name, seed),
            "wall_time_s": elapsed,
            "environment": run_environment(),  # after train: the frameworks it imported are loaded
            "train_options": recorded_options,
        }
        if isinstance(metrics, Mapping) and metrics.get(APPLIED_KEY) is not None:
            run["applied"] = _check_applied(metrics[APPLIED_KEY], where)
        study.runs[(candidate.name, seed)] = run
        if path is not None:
            study.save(path)
        shown = ", ".join(f"{key}={value:.4g}" for key, value in study.runs[(candidate.name, seed)]["metrics"].items())
        _report(f"[{index}/{len(todo)}] {candidate.name}, seed {seed}: {shown} ({elapsed:.1f} s)", progress)
    return study
