"""Choosing the gammas on validation, with the controls searched at the same budget. Framework-free.

:func:`search_gammas` runs successive halving (Jamieson & Talwalkar, 2016) *within each family* of
candidates (PDMP, uniform scaling, inverse PDMP, and optionally joint training at other learning
rates): every candidate trains on the tuning seeds at a small budget, the best ``1/eta`` by mean
validation metric go on to the next, larger budget, and the last rung's best is the family's choice.
The families get grids of the same size by default, so the same budget; the result can therefore
say "prioritising does not pay here" (the uniform family's choice does as well as PDMP's).

Choices are made on the validation metric of *tuning seeds*. Evaluate them with
:func:`pdmp.compare` on other seeds: each chosen candidate carries ``tuned_on`` and ``compare``
refuses an overlap. Each rung is a :class:`pdmp.Study` saved under ``folder``, so an interrupted search
resumes where it stopped.

Your train function gets the budget as a keyword: ``train(policy, seed, budget=epochs, **options)``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import check_bool, check_file_name, check_positive_finite, check_sequence
from pdmp.compare import (
    Candidate,
    Study,
    StudyError,
    TrainFunction,
    _check_candidates,
    _check_progress,
    _check_seeds,
    _report,
    compare,
)
from pdmp.controls import InversePDMP, UniformScaling
from pdmp.policies import PDMP, NoModulation
from pdmp.ranking import Ranking

__all__ = ["SearchResult", "gamma_grid", "search_gammas"]

#: Default grids: 9 candidates per family, so every family gets the same search budget. Small gamma_r
#: values hold back a weak branch that memorises the training set (the under-optimization regime).
DEFAULT_GAMMA_P = (2.0, 5.0, 10.0)
DEFAULT_GAMMA_R = (0.5, 0.1, 0.01)
DEFAULT_UNIFORM = (0.25, 0.5, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0)


def gamma_grid(
    ranking: Ranking,
    *,
    gamma_p: Sequence[float] = DEFAULT_GAMMA_P,
    gamma_r: Sequence[float] = DEFAULT_GAMMA_R,
    uniform: Sequence[float] = DEFAULT_UNIFORM,
    warmup: int = 1,
    lr_scales: Sequence[float] | None = None,
    lr_option: str = "lr_scale",
    **schedule: Any,
) -> dict[str, list[Candidate]]:
    """Families of candidates for :func:`search_gammas`: ``pdmp``, ``uniform``, ``inverse`` (and ``joint_lr``).

    ``pdmp`` and ``inverse`` take every (gamma_p, gamma_r) pair; ``uniform`` every factor in
    ``uniform``. With ``lr_scales``, a ``joint_lr`` family of plain joint training whose candidates pass
    ``{lr_option: scale}`` to your train function (which must then scale its learning rate): the
    "tuned learning rate" control. ``warmup`` and ``schedule`` go to every policy.
    """
    options = {"warmup": warmup, **schedule}
    gamma_p, gamma_r, uniform = (
        _check_grid(gamma_p, "gamma_p"),
        _check_grid(gamma_r, "gamma_r"),
        _check_grid(uniform, "uniform"),
    )
    if lr_scales is not None:
        lr_scales = _check_grid(lr_scales, "lr_scales")
    pairs = [
        (check_positive_finite(p, name="gamma_p"), check_positive_finite(r, name="gamma_r"))
        for p in gamma_p
        for r in gamma_r
    ]
    families: dict[str, list[Candidate]] = {
        "pdmp": [
            Candidate(
                f"pdmp[gp={p:g},gr={r:g}]",
                PDMP.from_ranking(ranking, gamma_p=p, gamma_r=r, allow_inverse=True, **options),
            )
            for p, r in pairs
        ],
        "uniform": [Candidate(f"uniform[g={g:g}]", UniformScaling(ranking.order, g, **options)) for g in uniform],
        "inverse": [
            Candidate(f"inverse[gp={p:g},gr={r:g}]", InversePDMP.from_ranking(ranking, gamma_p=p, gamma_r=r, **options))
            for p, r in pairs
        ],
    }
    if lr_scales is not None:
        families["joint_lr"] = [
            Candidate(
                f"joint[lr*{s:g}]", NoModulation(ranking.order), {lr_option: check_positive_finite(s, name="lr_scales")}
            )
            for s in lr_scales
        ]
    return families


def _check_grid(values: Any, name: str) -> tuple[float, ...]:
    """A grid must be a non-empty sequence of numbers: a bare number is refused, not searched as one value."""
    example = f"{name}=({values!r},)" if isinstance(values, int | float) else f"{name}=(2.0, 5.0)"
    return check_sequence(values, name=name, example=example)


@dataclass(frozen=True)
class SearchResult:
    """Per family: the chosen candidate, its last-rung validation mean, and what the search cost."""

    metric: str
    tuning_seeds: tuple[int, ...]
    budgets: tuple[float, ...]
    #: family -> chosen candidate (``tuned_on`` set to the tuning seeds).
    best: dict[str, Candidate]
    #: family -> list of rung studies (candidates x tuning seeds at that rung's budget).
    rungs: dict[str, list[Study]]
    higher_is_better: bool = True

    def score(self, family: str) -> float:
        """The chosen candidate's mean validation metric at the last rung."""
        last = self.rungs[family][-1]
        return float(np.mean(list(last.values(self.best[family].name, self.metric).values())))

    def cost(self, family: str) -> dict[str, float]:
        """Runs, budget units (sum of the budgets of every run) and wall time spent on a family."""
        runs = [(study, run) for study in self.rungs[family] for run in study.runs.values()]
        budget = sum(budget * len(study.runs) for budget, study in zip(self.budgets, self.rungs[family], strict=False))
        return {
            "runs": float(len(runs)),
            "budget": float(budget),
            "wall_time_s": float(sum(run["wall_time_s"] for _, run in runs)),
        }

    def candidates(self) -> list[Candidate]:
        """The chosen candidates, ready for :func:`pdmp.compare` on evaluation seeds."""
        return list(self.best.values())

    def to_markdown(self, *, scale: float = 100.0, digits: int = 1) -> str:
        lines = [
            f"| family | chosen | {self.metric} (tuning seeds {list(self.tuning_seeds)}, last rung) | runs | "
            "budget units | wall time |",
            "|---|---|---|---|---|---|",
        ]
        for family, candidate in self.best.items():
            cost = self.cost(family)
            lines.append(
                f"| {family} | {candidate.name} | {scale * self.score(family):.{digits}f} | {cost['runs']:.0f} | "
                f"{cost['budget']:g} | {cost['wall_time_s']:.0f} s |"
            )
        lines += [
            "",
            f"Successive halving within each family over budgets {list(self.budgets)}; chosen on {self.metric} "
            "of the tuning seeds only. Compare the choices on other seeds (pdmp.compare).",
        ]
        return "\n".join(lines)


def search_gammas(
    train: TrainFunction,
    families: Mapping[str, Iterable[Candidate]],
    tuning_seeds: Iterable[int],
    *,
    metric: str,
    budgets: Sequence[float],
    eta: int = 3,
    higher_is_better: bool = True,
    folder: str | os.PathLike[str] | None = None,
    progress: bool | Callable[[str], None] = True,
) -> SearchResult:
    """Successive halving within each family; returns each family's choice (see the module docstring).

    Args:
        train: ``train(policy, seed, budget=b, **candidate.options) -> metrics`` (any framework).
        families: family name -> candidates, e.g. :func:`gamma_grid`'s result.
        tuning_seeds: seeds the choice is made on; evaluate on *other* seeds.
        metric: the validation metric to choose by (e.g. ``"val_acc"``); never a test metric.
        budgets: increasing budgets (e.g. epochs ``(3, 10)``); the last is the full training budget.
        eta: keep the best ``ceil(n / eta)`` candidates after each rung but the last.
        folder: where each rung's study is saved, so that the search resumes after an interruption.
    """
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must name a validation metric your train function returns, got {metric!r}")
    if "test" in metric.lower():
        raise ValueError(
            f"metric {metric!r} looks like a test metric; choose gammas on validation (e.g. 'val_acc'), "
            "never on the test split"
        )
    _check_progress(progress)
    budgets = tuple(
        check_positive_finite(b, name="budgets")
        for b in check_sequence(budgets, name="budgets", example="(3, 10)", allow_empty=True)
    )
    if not budgets or any(b2 <= b1 for b1, b2 in itertools.pairwise(budgets)):
        raise ValueError(f"budgets must be a non-empty increasing sequence, e.g. (3, 10) epochs; got {list(budgets)}")
    higher_is_better = check_bool(higher_is_better, name="higher_is_better")
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ValueError(f"eta must be an integer >= 2 (keep the best 1/eta each rung), got {eta!r}")
    if not isinstance(families, Mapping) or not families:
        raise ValueError("families must be a non-empty dict: family name -> candidates (see pdmp.search.gamma_grid)")
    for family in families:
        if folder is not None or not isinstance(family, str):  # family names become file names
            check_file_name(family, name=f"family name {family!r}")
    grids = {family: _check_candidates(candidates) for family, candidates in families.items()}
    seeds = tuple(_check_seeds(tuning_seeds))
    best: dict[str, Candidate] = {}
    rungs: dict[str, list[Study]] = {}
    for family, grid in grids.items():
        survivors = grid
        rungs[family] = []
        for rung, budget in enumerate(budgets):
            path = None if folder is None else Path(folder) / f"{family}-rung{rung}.json"
            if path is not None and path.exists():
                _check_rung_seeds(path, seeds)
            _report(f"search {family}: rung {rung}, budget {budget:g}, {len(survivors)} candidate(s)", progress)
            study = compare(
                train,
                survivors,
                seeds,
                path=path,
                progress=progress,
                train_options={"budget": int(budget) if float(budget).is_integer() else budget},
            )
            rungs[family].append(study)
            means = {c.name: _mean_on(study, c.name, metric, seeds) for c in survivors}
            ordered = sorted(survivors, key=lambda c: -means[c.name] if higher_is_better else means[c.name])
            keep = 1 if rung == len(budgets) - 1 else max(1, math.ceil(len(survivors) / eta))
            survivors = ordered[:keep]
        best[family] = replace(survivors[0], tuned_on=seeds)
    return SearchResult(metric, seeds, budgets, best, rungs, higher_is_better)


def _check_rung_seeds(path: Path, seeds: tuple[int, ...]) -> None:
    """A resumed rung must have been made on the same tuning seeds: halving on other seeds would choose
    with runs the chosen candidate's ``tuned_on`` does not name."""
    stored = Study.load(path)
    if sorted(stored.seeds) != sorted(seeds):
        raise ValueError(
            f"search file {str(path)!r} was made on tuning seeds {sorted(stored.seeds)}, this search uses "
            f"{sorted(seeds)}; resume with the same tuning_seeds, or use a new folder"
        )


def _mean_on(study: Study, name: str, metric: str, seeds: Sequence[int]) -> float:
    """Mean of ``metric`` over exactly the tuning seeds; a run without the metric is refused, not
    averaged as NaN (which would sort anywhere and could be chosen)."""
    values = study.values(name, metric)
    missing = [seed for seed in seeds if seed not in values]
    if missing:
        returned = sorted({key for (n, _), run in study.runs.items() if n == name for key in run["metrics"]})
        raise StudyError(
            f"candidate {name!r} has no {metric!r} on tuning seed(s) {missing} (its train function returned "
            f"{', '.join(returned) or 'nothing'}); return {metric!r} from every run"
        )
    return float(np.mean([values[seed] for seed in seeds]))
