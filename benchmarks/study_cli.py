"""What the comparison scripts share (``gamma_search``, ``paper_regime``, ``baselines``,
``adaptive_rules``): the settings they run on, their common options, a setting's data and ranking, the
finished part of a saved study, and writing ``summary.md`` with its plot."""

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
LR = 0.05  # the main benchmark's SGD learning rate (see README: base lr set in pilots)


@dataclass(frozen=True)
class Setting:
    """A dataset with an encoder and an optimizer recipe, and the ranking its comparisons use."""

    dataset: str
    encoder: str
    optimizer: str
    ranking_file: Path

    @property
    def recipe(self) -> str:
        lr = "AdamW lr 1e-3, wd 1e-2" if self.optimizer == "adamw" else f"SGD lr {LR}"
        return f"{self.dataset}, torch, {self.encoder} encoders, concat, {lr}"


#: The comparison settings: the three built-in AV-digits regimes with CNN encoders under SGD, the
#: audio-dominant regime with transformer encoders under AdamW, and mfeat (six views, MLP encoders, SGD).
SETTINGS = {
    **{
        regime: Setting(f"av_digits:{regime}", "cnn", "sgd", DEFAULT_RANKINGS / f"ranking_av_digits-{regime}_cnn.json")
        for regime in REGIMES
    },
    "audio_dominant_transformer": Setting(
        "av_digits:audio_dominant",
        "transformer",
        "adamw",
        ROOT / "reported" / "transformer" / "ranking_av_digits-audio_dominant_transformer_adamw.json",
    ),
    "mfeat": Setting("mfeat", "cnn", "sgd", ROOT / "reported" / "extended-a" / "ranking_mfeat_cnn.json"),
}


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    seeds: Sequence[int],
    seeds_help: str | None = None,
    choices: Sequence[str] = REGIMES,
) -> None:
    """``--regime --seeds --ranking --out --threads --subset``; ``--regime`` is one of ``choices``
    (names in :data:`SETTINGS`)."""
    parser.add_argument("--regime", required=True, choices=list(choices))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help=seeds_help)
    parser.add_argument("--ranking", type=Path, default=None, help="ranking JSON (default: the main benchmark's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--subset", type=float, default=None, help="fraction of each split (quick checks only)")


@dataclass
class Regime:
    """One setting's dataset name, output folder and ranking, as the options chose them."""

    dataset_name: str
    out: Path
    ranking_file: Path
    ranking: pdmp.Ranking
    setting: Setting

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
    setting = SETTINGS[args.regime]
    ranking_file = args.ranking or setting.ranking_file
    return Regime(setting.dataset, out, ranking_file, pdmp.Ranking.load(ranking_file), setting)


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


def merge_seeds(target: Path, sources: Sequence[Path]) -> Study:
    """Fold the runs of ``sources`` (studies of the same candidates on other seeds, e.g. run side by side
    in other processes) into the study at ``target``, save it and return it; a run ``target`` already
    has is kept, a source with other candidates is refused."""
    study = Study.load(target)
    given = [c.to_dict() for c in study.candidates]
    for source in sources:
        other = Study.load(source)
        if [c.to_dict() for c in other.candidates] != given:
            raise ValueError(f"{source} holds other candidates than {target}: only one study's other seeds merge")
        study.seeds += [seed for seed in other.seeds if seed not in study.seeds]
        for key, run in other.runs.items():
            study.runs.setdefault(key, run)
    study.save(target)
    return study


def machine_line(minutes: float, threads: int | None, extra: str = "") -> str:
    return (
        f"Total wall time {minutes:.1f} min{extra} on {environment()['cpu']} ({os.cpu_count()} cores, "
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
