"""Choose the gammas on validation with the library's own search, then compare on other seeds.

    python -m benchmarks.gamma_search --regime audio_dominant --threads 1
    python -m benchmarks.gamma_search --regime under_optimization --threads 1
    python -m benchmarks.gamma_search --regime audio_dominant_transformer --families pdmp uniform --search-only

For one setting of :data:`benchmarks.study_cli.SETTINGS` (by default the three built-in AV-digits
regimes with CNN encoders, concat fusion and the main benchmark's SGD recipe; also the audio-dominant
regime with transformer encoders under AdamW, and mfeat):

1. the ranking is the setting's stage-1 ranking (for the AV-digits CNN regimes the main benchmark's,
   ``benchmarks/reported/main``: validation accuracy of unimodal models, seed 0) unless ``--ranking``
   names another file;
2. :func:`pdmp.search_gammas` runs successive halving within each family (PDMP, uniform scaling,
   inverse PDMP, joint training at other learning rates; 9/9/9/4 candidates) on the *tuning seeds*,
   choosing by final-epoch validation accuracy; each family's choice is written to ``chosen.json``
   (as ``<family>_tuned``, with the seeds it was tuned on);
3. unless ``--search-only``, :func:`pdmp.compare` trains joint, PDMP at its defaults, every family's
   choice and the adaptive rule (:class:`pdmp.AdaptivePDMP`, untuned) on the *evaluation seeds*
   (disjoint from the tuning seeds) and reports paired differences with paired Student-t intervals,
   against joint training and against joint training at the tuned learning rate. With
   ``--search-only`` the choices are evaluated elsewhere (``benchmarks.adaptive_rules evaluate`` reads
   ``chosen.json`` from ``benchmarks/reported/gamma-search/<setting>``).

Everything is written under ``--out`` (default ``results/gamma-search/<setting>``): the search's rung
studies, ``chosen.json``, ``evaluation.json`` (resumable), ``summary.md`` and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pdmp
from benchmarks import study_cli
from benchmarks.protocol import ENCODER_OVERRIDES, TrainConfig
from benchmarks.study_cli import LR, SETTINGS, Regime, add_common_arguments, finished_part, machine_line, prepare
from pdmp.compare import Candidate, Study, compare, default_candidates
from pdmp.search import SearchResult, gamma_grid, search_gammas

LR_SCALES = (0.5, 2.0, 5.0, 10.0)
FAMILIES = ("pdmp", "uniform", "joint_lr", "inverse")


def families_for(ranking: pdmp.Ranking, names: Sequence[str]) -> dict[str, list[Candidate]]:
    grid = gamma_grid(ranking, lr_scales=LR_SCALES, warmup=1)
    return {name: grid[name] for name in names}


def make_train(
    dataset_name: str,
    data: Any,
    *,
    encoder: str = "cnn",
    optimizer: str = "sgd",
    width: int = 32,
    device: str = "cpu",
    lr: float | None = None,
    on_result: Callable[[pdmp.CoefficientPolicy, int, dict[str, Any]], None] | None = None,
) -> Callable[..., dict[str, float]]:
    """``train(policy, seed, budget, lr_scale=1.0) -> metrics`` on the benchmark's torch models.

    ``budget`` is the number of epochs (a complete cosine schedule of that length). Metrics: final-epoch
    validation and test accuracy, and test accuracy at the best-validation epoch. ``lr``: the base
    learning rate (default: :data:`LR` for SGD, 1e-3 for AdamW). ``on_result(policy, seed, result)``
    receives each run's full result (per-epoch history included), e.g. to keep learning curves.
    """
    from benchmarks import train_torch

    base = {"lr": 1e-3, "weight_decay": 1e-2} if optimizer == "adamw" else {"lr": LR}
    if lr is not None:
        base["lr"] = lr

    def train(policy: pdmp.CoefficientPolicy, seed: int, budget: int = 10, lr_scale: float = 1.0) -> dict[str, float]:
        config = TrainConfig(
            epochs=int(budget),
            optimizer=optimizer,
            **base,
            encoder=encoder,
            width=width,
            device=device,
            batch_size=64,
            encoder_overrides=ENCODER_OVERRIDES.get(dataset_name, {}),
        )
        result = train_torch.train_run(data, tuple(data.modalities), config, seed, policy=policy, lr_scale=lr_scale)
        if on_result is not None:
            on_result(policy, seed, result)
        return {
            "val_acc": result["final"]["val"]["acc"],
            "test_acc": result["final"]["test"]["acc"],
            "test_acc_at_best_val": result["best_val"]["test"]["acc"],
            "test_f1": result["final"]["test"]["f1"],
        }

    return train


def evaluation_candidates(ranking: pdmp.Ranking, chosen: Sequence[Candidate]) -> list[Candidate]:
    """joint, PDMP and uniform scaling at their defaults, each family's choice (renamed ``<family>_tuned``),
    and the adaptive rule with its defaults (untuned: one configuration for every setting)."""
    # The comparison: joint, PDMP at its defaults, the tuned PDMP / uniform / learning-rate
    # choices and the untuned adaptive rule (the inverse family is reported from the search only).
    defaults = [
        c for c in default_candidates(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1) if c.name in ("joint", "pdmp")
    ]
    tuned = [c for c in chosen if c.name != "inverse_tuned"]
    return [*defaults, *tuned, Candidate("adaptive", pdmp.AdaptivePDMP.from_ranking(ranking))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, seeds=[0, 1, 2, 3, 4], seeds_help="evaluation seeds", choices=tuple(SETTINGS))
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--budgets", type=int, nargs="+", default=[3, 10], help="epochs per successive-halving rung")
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(FAMILIES),
        choices=FAMILIES,
        help="families to search, in this order (each family's rungs are saved and resume on their own)",
    )
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="stop after the search (its choices are in chosen.json); no evaluation runs",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild summary.md from the saved search and evaluation files, over the seeds every candidate finished",
    )
    args = parser.parse_args(argv)
    regime = prepare(args, "gamma-search")
    out, ranking = regime.out, regime.ranking
    if args.report_only:
        return report_only(out, args, argv, regime)
    setting = regime.setting
    data = regime.load_data(args.subset)
    train = make_train(regime.dataset_name, data, encoder=setting.encoder, optimizer=setting.optimizer)
    started = time.perf_counter()

    result = run_search(train, args, regime)
    chosen = tuned_choices(result)
    write_choices(out, chosen)
    search_seconds = time.perf_counter() - started
    if args.search_only:
        write_search_summary(out, args, argv, regime, result, chosen, search_seconds)
        return 0
    study = compare(
        train,
        evaluation_candidates(ranking, chosen),
        args.seeds,
        path=out / "evaluation.json",
        train_options={"budget": args.budgets[-1]},
    )
    total_minutes = (time.perf_counter() - started) / 60
    write_summary(out, args, argv, regime, result, chosen, study, search_seconds, total_minutes)
    return 0


def run_search(
    train: Callable[..., dict[str, float]], args: argparse.Namespace, regime: Regime, *, progress: bool = True
) -> SearchResult:
    """:func:`pdmp.search_gammas` over the chosen families, resuming from (and saving to) ``out/search``."""
    return search_gammas(
        train,
        families_for(regime.ranking, args.families),
        args.tuning_seeds,
        metric="val_acc",
        budgets=args.budgets,
        eta=3,
        folder=regime.out / "search",
        progress=progress,
    )


def tuned_choices(result: SearchResult) -> list[Candidate]:
    """Each family's choice, named ``<family>_tuned`` (``tuned_on`` already holds the tuning seeds)."""
    return [replace(candidate, name=f"{family}_tuned") for family, candidate in result.best.items()]


def write_choices(out: Path, chosen: Sequence[Candidate]) -> None:
    (out / "chosen.json").write_text(json.dumps([c.to_dict() for c in chosen], indent=1) + "\n")


def load_choices(folder: Path) -> list[Candidate]:
    """The tuned candidates a search wrote to ``folder/chosen.json`` (empty when there is none)."""
    path = folder / "chosen.json"
    if not path.exists():
        return []
    try:
        return [Candidate.from_dict(item) for item in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a gamma search's choices ({error}); rerun benchmarks.gamma_search") from None


def command_line(argv: list[str] | None) -> str:
    return " ".join(["python -m benchmarks.gamma_search", *(argv if argv is not None else sys.argv[1:])])


def search_lines(
    args: argparse.Namespace,
    argv: list[str] | None,
    regime: Regime,
    result: SearchResult,
    chosen: Sequence[Candidate],
    search_seconds: float,
    evaluated_on: Sequence[int] | None,
) -> list[str]:
    """The summary's title, command and search table (``evaluated_on``: the evaluation's seeds, if any)."""
    seeds = f"Tuning seeds {args.tuning_seeds}."
    if evaluated_on is not None:
        seeds = (
            f"Tuning seeds {args.tuning_seeds}, evaluation seeds {list(evaluated_on)} "
            "(every candidate finished on each)."
        )
    return [
        f"# Gamma search: {args.regime} ({regime.setting.recipe}, {args.budgets[-1]} epochs)"
        + ("" if evaluated_on is not None else ", search only"),
        "",
        f"Command: `{command_line(argv)}`. Ranking: `{regime.ranking_file.name}` ({' > '.join(regime.ranking.order)}). "
        + seeds,
        "",
        "## Search (validation accuracy of the tuning seeds)",
        "",
        result.to_markdown(),
        "",
        f"Chosen (`chosen.json`): {describe(chosen)}.",
        "",
        *([f"Search wall time: {search_seconds / 60:.1f} min.", ""] if evaluated_on is not None else []),
    ]


def write_search_summary(
    out: Path,
    args: argparse.Namespace,
    argv: list[str] | None,
    regime: Regime,
    result: SearchResult,
    chosen: Sequence[Candidate],
    search_seconds: float,
) -> None:
    """``summary.md`` of a search whose choices are evaluated elsewhere."""
    lines = search_lines(args, argv, regime, result, chosen, search_seconds, None)
    text = "\n".join([*lines, machine_line(search_seconds / 60, args.threads)]) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


def describe(chosen: Sequence[Candidate]) -> str:
    return "; ".join(f"{c.name} = {c.policy!r}{' ' + json.dumps(c.options) if c.options else ''}" for c in chosen)


def report_only(out: Path, args: argparse.Namespace, argv: list[str] | None, regime: Regime) -> int:
    """The summary of an interrupted or finished run, from its files: no training."""

    def refuse(*_: Any, **__: Any) -> dict[str, float]:
        raise RuntimeError("--report-only found a run that has not finished; rerun without --report-only")

    result = run_search(refuse, args, regime, progress=False)
    chosen = tuned_choices(result)
    search_seconds = sum(result.cost(family)["wall_time_s"] for family in result.best)
    if args.search_only:
        write_search_summary(out, args, argv, regime, result, chosen, search_seconds)
        return 0
    stored = Study.load(out / "evaluation.json")
    study = finished_part(stored)
    total = (search_seconds + sum(run["wall_time_s"] for run in stored.runs.values())) / 60
    write_summary(out, args, argv, regime, result, chosen, study, search_seconds, total)
    return 0


def write_summary(
    out: Path,
    args: argparse.Namespace,
    argv: list[str] | None,
    regime: Regime,
    result: SearchResult,
    chosen: Sequence[Candidate],
    study: Study,
    search_seconds: float,
    total_minutes: float,
) -> None:
    lines = [
        *search_lines(args, argv, regime, result, chosen, search_seconds, study.seeds),
        "## Evaluation on other seeds: final-epoch test accuracy, paired against joint training",
        "",
        study.to_markdown("test_acc"),
        "",
        "## The same, paired against joint training at the tuned learning rate",
        "",
        study.to_markdown("test_acc", reference="joint_lr_tuned"),
        "",
        "## Test accuracy at the best-validation epoch, paired against joint training",
        "",
        study.to_markdown("test_acc_at_best_val"),
        "",
        machine_line(total_minutes, args.threads),
    ]
    study_cli.write_summary(out, lines, study)


if __name__ == "__main__":
    raise SystemExit(main())
