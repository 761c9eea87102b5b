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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import check_non_negative_int
from pdmp.controls import InversePDMP, UniformScaling
from pdmp.policies import PDMP, CoefficientPolicy, NoModulation, policy_from_config
from pdmp.ranking import Ranking
from pdmp.stats import PairedDifference, paired_difference, seeds_needed

__all__ = ["Candidate", "Study", "StudyError", "TrainFunction", "compare", "default_candidates", "run_environment"]

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
    """

    name: str
    policy: CoefficientPolicy
    options: Mapping[str, Any] = field(default_factory=dict)
    tuned_on: tuple[int, ...] = ()

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
        object.__setattr__(
            self, "tuned_on", tuple(check_non_negative_int(s, name=f"{self.name} tuned_on seed") for s in self.tuned_on)
        )

    def fresh_policy(self) -> CoefficientPolicy:
        """A new policy equal to :attr:`policy`, so no state can leak from one run into the next."""
        return policy_from_config(self.policy.get_config())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "policy": self.policy.get_config(),
            "options": dict(self.options),
            "tuned_on": list(self.tuned_on),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            name=data["name"],
            policy=policy_from_config(data["policy"]),
            options=data.get("options", {}),
            tuned_on=tuple(data.get("tuned_on", ())),
        )


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
        Candidate("pdmp", PDMP.from_ranking(ranking, gamma_p=gamma_p, gamma_r=gamma_r, **options)),
        Candidate("uniform", UniformScaling(ranking.order, gamma_p, **options)),
        Candidate("inverse", InversePDMP.from_ranking(ranking, gamma_p=gamma_p, gamma_r=gamma_r, **options)),
    ]


def _check_candidates(candidates: Iterable[Candidate]) -> list[Candidate]:
    result = list(candidates)
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


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    result = [check_non_negative_int(seed, name="seed") for seed in seeds]
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
        if not isinstance(key, str):
            raise StudyError(f"{where} returned a metric named {key!r}; metric names must be strings")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StudyError(f"{where} returned {key}={value!r}, which is not a number") from None
        if not math.isfinite(number):
            raise StudyError(
                f"{where} returned {key}={value!r}; metrics must be finite (a diverged run should report its "
                "accuracy, not a NaN loss)"
            )
        result[key] = number
    return result


class Study:
    """Results of candidates x seeds: ``runs[(candidate, seed)] = {"metrics": {...}, "wall_time_s": s}``."""

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
                "relative_wall_time": self.wall_time(name) / reference_time if reference_time > 0 else None,
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
        lines += [
            "",
            f"Paired by seed; interval: paired Student-t, {len(self.seeds)} seed(s); p: exact two-sided sign-flip "
            "permutation test (its smallest possible value is 2/2^n, so it needs >= 6 seeds to fall below 0.05). "
            "'seeds for a verdict': how many seeds would make the observed mean difference significant if its "
            "spread stayed the same.",
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
            data = json.loads(source.read_text())
            if not isinstance(data, dict) or data.get("format") != STUDY_FORMAT:
                raise ValueError(
                    f"not a pdmp study (format {data.get('format') if isinstance(data, dict) else None!r})"
                )
            study = cls([Candidate.from_dict(item) for item in data["candidates"]], data["seeds"], data["reference"])
            for run in data["runs"]:
                key = (run["candidate"], check_non_negative_int(run["seed"], name="run seed"))
                study.candidate(key[0])
                study.runs[key] = {
                    "metrics": _check_metrics(run["metrics"], key[0], key[1]),
                    "wall_time_s": float(run["wall_time_s"]),
                }
                if run.get("environment") is not None:
                    if not isinstance(run["environment"], dict):
                        raise ValueError(f"run {key}: environment must be a dict, got {run['environment']!r}")
                    study.runs[key]["environment"] = run["environment"]
        except (OSError, KeyError, TypeError, ValueError, StudyError) as error:
            raise ValueError(
                f"cannot read study file {str(source)!r}: {error!r}; delete it to start the study afresh"
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
    return {
        "cpu": cpu,
        "cpu_features": features,
        "cpus": os.cpu_count() or 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "frameworks": frameworks,
        "host": platform.node(),
    }


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
    candidates = _check_candidates(candidates)
    seeds = _check_seeds(seeds)
    for candidate in candidates:
        leaked = sorted(set(candidate.tuned_on) & set(seeds))
        if leaked:
            raise ValueError(
                f"candidate {candidate.name!r} was tuned on seed(s) {leaked}, which are also evaluation seeds; "
                "evaluate on seeds it was not tuned on (its tuning runs are optimistically biased)"
            )
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
        study.runs.update(stored.runs)
        study.seeds = seeds + [seed for seed in stored.seeds if seed not in seeds]
    extra = dict(train_options or {})
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
        study.runs[(candidate.name, seed)] = {
            "metrics": _check_metrics(metrics, candidate.name, seed),
            "wall_time_s": elapsed,
            "environment": run_environment(),  # after train: the frameworks it imported are loaded
        }
        if path is not None:
            study.save(path)
        shown = ", ".join(f"{key}={value:.4g}" for key, value in study.runs[(candidate.name, seed)]["metrics"].items())
        _report(f"[{index}/{len(todo)}] {candidate.name}, seed {seed}: {shown} ({elapsed:.1f} s)", progress)
    return study
