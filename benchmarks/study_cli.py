"""What the comparison scripts on one AV-digits regime share (``gamma_search``, ``paper_regime``,
``baselines``): their common options, the regime's data and ranking, the finished part of a saved
study, and writing ``summary.md`` with its plot."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pdmp
from benchmarks.protocol import environment
from pdmp.compare import Study

ROOT = Path(__file__).resolve().parent
DEFAULT_RANKINGS = ROOT / "reported" / "main"
REGIMES = ("image_dominant", "audio_dominant", "under_optimization")


def add_common_arguments(
    parser: argparse.ArgumentParser, *, seeds: Sequence[int], seeds_help: str | None = None
) -> None:
    """``--regime --seeds --ranking --out --threads --subset``."""
    parser.add_argument("--regime", required=True, choices=REGIMES)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help=seeds_help)
    parser.add_argument("--ranking", type=Path, default=None, help="ranking JSON (default: the main benchmark's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--subset", type=float, default=None, help="fraction of each split (quick checks only)")


@dataclass
class Regime:
    """One regime's dataset name, output folder and ranking, as the options chose them."""

    dataset_name: str
    out: Path
    ranking_file: Path
    ranking: pdmp.Ranking

    def load_data(self, subset: float | None) -> Any:
        from benchmarks.run import load_dataset

        return load_dataset(self.dataset_name, 0, subset)


def prepare(args: argparse.Namespace, folder: str) -> Regime:
    """Set torch's thread count, make the output folder (default ``results/<folder>/<regime>``), load the ranking."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("results") / folder / args.regime
    out.mkdir(parents=True, exist_ok=True)
    ranking_file = args.ranking or DEFAULT_RANKINGS / f"ranking_av_digits-{args.regime}_cnn.json"
    return Regime(f"av_digits:{args.regime}", out, ranking_file, pdmp.Ranking.load(ranking_file))


def complete_seeds(study: Study) -> list[int]:
    """The study's seeds on which every candidate finished."""
    return [s for s in study.seeds if all((c.name, s) in study.runs for c in study.candidates)]


def finished_part(stored: Path | Study) -> Study:
    """A study (or its saved file) restricted to the seeds on which every candidate finished (for
    ``--report-only``)."""
    if not isinstance(stored, Study):
        stored = Study.load(stored)
    complete = complete_seeds(stored)
    study = Study(stored.candidates, complete, stored.reference)
    study.runs = {key: run for key, run in stored.runs.items() if key[1] in complete}
    return study


def machine_line(minutes: float, threads: int | None, extra: str = "") -> str:
    return (
        f"Total wall time {minutes:.1f} min{extra} on {environment()['processor']} ({os.cpu_count()} cores, "
        f"{threads or 'all'} torch thread(s))."
    )


def write_summary(out: Path, lines: Sequence[str], study: Study, metric: str = "test_acc") -> None:
    """``summary.md`` from ``lines``, the study's plot of ``metric``, and the text on stdout."""
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    try:
        study.plot(out / "evaluation.png", metric)
    except ImportError as error:
        print(f"plot skipped: {error}")
    print(text)


def run_timed(main: Callable[[], int]) -> int:
    """Run a script's ``main`` and say how long it took (for ``if __name__ == "__main__"``)."""
    started = time.perf_counter()
    code = main()
    print(f"finished in {(time.perf_counter() - started) / 60:.1f} min")
    return code
