"""PDMP against the balancing methods it is compared with: OGM-GE, AGM, MMPareto, InfoReg and ARL
(and, with ``--rebalancing``, G-Blending, PMR, Diagnosing & Re-learning and MLA).

    python -m benchmarks.baselines --regime audio_dominant --threads 1
    python -m benchmarks.baselines --regime image_dominant --threads 1
    python -m benchmarks.baselines --regime under_optimization --threads 1
    # the paper's complete comparison, the four rebalancing methods in the same study:
    python -m benchmarks.baselines --regime audio_dominant --rebalancing --seeds 0 1 2 3 4 --threads 1 \
        --out benchmarks/reported/baselines-complete/audio_dominant

For one built-in AV-digits regime (torch, CNN encoders, concat, the main benchmark's recipe: SGD lr
0.05, momentum 0.9, 10 epochs, cosine decay), every method at its reference defaults, untuned, on the
same seeds and data order: joint training, PDMP (10, 0.5, one warm-up epoch, the main benchmark's
ranking), OGM-GE (alpha 0.8), AGM (alpha 1), MMPareto (gamma 1.5, a unimodal head per encoder),
InfoReg (strengths 0.95 audio / 0.1 image, the reference's audio / visual constants; window 10,
threshold 0.05) and ARL (T 4, gamma 4). ARL's warm-up is one epoch here, like PDMP's (the reference's
6 of 100 epochs would leave 4 of these 10). How each method is wired into the training loop is
``benchmarks.train_torch.baseline_step``; AGM's and ARL's reference gradient clipping follows their
modulation (``benchmarks.train_torch.reference_clipping``). Nothing is tuned, so every seed is an
evaluation seed. Paired differences against PDMP and against joint training, with paired Student-t
intervals.

``--rebalancing`` adds, to the same study (``evaluation.json``, so every pair is within one study and one
machine), the methods that change the loss, the parameters or the step instead of scaling gradients
(``pdmp.rebalancing``, through ``pdmp.backends.torch.Rebalancer``): G-Blending (online, MultiBench's weights,
a unimodal head per encoder), PMR (alpha 1, prototype momentum 0.2, the published code's defaults), Diagnosing
& Re-learning (move_lambda 3, three re-initialisations) and MLA (a shared head, entropy fusion weights; as the
published code runs, without the head projection), with MLA's head projection firing beside it as
``mla_projected`` (the paper's gradient modification, the reference's arithmetic). MLA's shared head needs
one feature size: where the encoders differ (under-optimization: a 512-wide image MLP, a 32-wide audio CNN),
the wider ones get a linear map to the narrowest (``benchmarks.models_torch.WidthAdapter``). Two epoch counts
are scaled to the 10-epoch budget as ARL's warm-up is: G-Blending re-estimates its weights every 2 epochs
(MultiBench's 20 would leave the initial equal weights for the whole run) and Diagnosing & Re-learning
diagnoses every 2 epochs (the reference's 20 would never come).

Written under ``--out`` (default ``results/baselines/<regime>``): ``evaluation.json`` (resumable),
``summary.md`` and a plot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import pdmp
from benchmarks.gamma_search import LR, make_train
from benchmarks.study_cli import (
    add_common_arguments,
    finished_part,
    machine_line,
    prepare,
    run_timed,
    write_summary,
)
from pdmp.compare import Candidate, Study, compare
from pdmp.stats import paired_difference
from pdmp.transforms import GradientTransform

INFOREG_STRENGTH = {"audio": 0.95, "image": 0.1}  # the reference's audio / visual constants (CREMA-D)


@pdmp.register_policy
class UnimodalLossControl(pdmp.GradientPolicy):
    """Joint training plus each modality's unimodal loss on the fusion head's decomposed logits, weighted
    by ``weight``, and no modulation: what InfoReg and ARL add to the loss, without their transforms.
    ``only``: that modality's loss alone (the adaptive rule's auxiliary loss at a fixed weight)."""

    kind = "UnimodalLossControl"
    uses_logits = True  # the runner's decomposed-logit path, which adds the unimodal losses

    def __init__(self, modalities: Sequence[str], weight: float = 1.0, only: str | None = None) -> None:
        super().__init__(modalities)
        self.weight = float(weight)
        if only is not None and only not in self.modalities:
            raise ValueError(f"UnimodalLossControl only={only!r} is not one of {list(self.modalities)}")
        self.only = only

    def unimodal_loss_weight(self, epoch: int) -> float:
        return self.weight

    def unimodal_loss_weights(self, *, step: int = 0, epoch: int = 0) -> dict[str, float]:
        if self.only is None:
            return self._all(self.weight)
        return {m: (self.weight if m == self.only else 0.0) for m in self.modalities}

    def compute_transform(self, *, step: int, epoch: int, logit_stats: Any, gradient_stats: Any) -> GradientTransform:
        return GradientTransform(fused=self._all(1.0))

    def get_config(self) -> dict[str, Any]:
        config = {"type": self.kind, "modalities": list(self.modalities), "weight": self.weight}
        return config if self.only is None else {**config, "only": self.only}


def control_candidates(ranking: pdmp.Ranking) -> list[Candidate]:
    """The unimodal losses alone, at InfoReg's weight (1) and at ARL's (4; ARL's 1-epoch warm-up at 1 aside)."""
    return [
        Candidate("unimodal_losses_x1", UnimodalLossControl(ranking.order, 1.0)),
        Candidate("unimodal_losses_x4", UnimodalLossControl(ranking.order, 4.0)),
    ]


def candidates(ranking: pdmp.Ranking) -> list[Candidate]:
    names = ranking.order
    strength = {name: INFOREG_STRENGTH.get(name, 0.95) for name in names}
    return [
        Candidate("joint", pdmp.NoModulation(names)),
        Candidate("pdmp", pdmp.PDMP.from_ranking(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1)),
        Candidate("ogmge", pdmp.OGMGE(names, alpha=0.8)),
        Candidate("agm", pdmp.AGM(names)),
        Candidate("mmpareto", pdmp.MMPareto(names)),
        Candidate("inforeg", pdmp.InfoReg(names, strength)),
        Candidate("arl", pdmp.ARL(names, warmup=1)),
    ]


#: Epoch counts of the rebalancing methods scaled to the 10-epoch budget (module docstring).
GBLENDING_SUPER_EPOCH = 2
RELEARNING_EVERY = 2


def rebalancing_candidates(ranking: pdmp.Ranking) -> list[Candidate]:
    """G-Blending, PMR, Diagnosing & Re-learning and MLA at their reference defaults (two epoch counts
    scaled to the budget, module docstring), and MLA with its head projection firing."""
    names = ranking.order
    return [
        Candidate("gblending", pdmp.GBlending(names, super_epoch=GBLENDING_SUPER_EPOCH)),
        Candidate("pmr", pdmp.PMR(names)),
        Candidate("relearning", pdmp.DiagnosingRelearning(names, every=RELEARNING_EVERY)),
        Candidate("mla", pdmp.MLA(names, projection="off")),  # the published code: its projection never fires
        # The head projection, which never fires in the published code: the reference's arithmetic as written.
        Candidate("mla_projected", pdmp.MLA(names, projection="code")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, seeds=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--controls",
        action="store_true",
        help="also train the unimodal-loss controls (controls.json), paired with the main study's joint runs",
    )
    parser.add_argument(
        "--rebalancing",
        action="store_true",
        help="also train G-Blending, PMR, Diagnosing & Re-learning and MLA, in the same study (evaluation.json); "
        "start a fresh --out folder for it, so that every pair of runs is within one machine",
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from the saved runs")
    args = parser.parse_args(argv)
    regime = prepare(args, "baselines")
    controls = None
    chosen = candidates(regime.ranking) + (rebalancing_candidates(regime.ranking) if args.rebalancing else [])
    if args.report_only:
        study = finished_part(regime.out / "evaluation.json")
        if (regime.out / "controls.json").exists():
            controls = finished_part(regime.out / "controls.json")
    else:
        train = make_train(regime.dataset_name, regime.load_data(args.subset))
        study = compare(
            train,
            chosen,
            args.seeds,
            path=regime.out / "evaluation.json",
            train_options={"budget": args.epochs},
        )
        if args.controls:
            controls = compare(
                train,
                control_candidates(regime.ranking),
                args.seeds,
                path=regime.out / "controls.json",
                train_options={"budget": args.epochs},
            )
    command = " ".join(["python -m benchmarks.baselines", *(argv if argv is not None else sys.argv[1:])])
    total = sum(run["wall_time_s"] for run in study.runs.values()) / 60
    joint = [study.runs[("joint", s)]["wall_time_s"] for s in study.seeds if ("joint", s) in study.runs]
    lines = [
        f"# Baselines: av_digits {args.regime} (torch, CNN, concat, SGD lr {LR}, {args.epochs} epochs)",
        "",
        f"Command: `{command}`. Ranking (PDMP's): `{regime.ranking_file.name}` ({' > '.join(regime.ranking.order)}). "
        f"Seeds {study.seeds}; every method at its reference defaults (nothing tuned).",
        "",
        "## Final-epoch test accuracy, paired against PDMP",
        "",
        study.to_markdown("test_acc", reference="pdmp"),
        "",
        "## The same, paired against joint training",
        "",
        study.to_markdown("test_acc", reference="joint"),
        "",
        *(
            [
                "## Final-epoch test macro-F1, paired against PDMP",
                "",
                study.to_markdown("test_f1", reference="pdmp"),
                "",
            ]
            if "test_f1" in study.metrics
            else []
        ),
        "## Test accuracy at the best-validation epoch, paired against PDMP",
        "",
        study.to_markdown("test_acc_at_best_val", reference="pdmp"),
        "",
        machine_line(total, args.threads, f" ({np.mean(joint) / 60 if joint else float('nan'):.1f} min per joint run)"),
    ]
    if controls is not None:
        lines[-1:-1] = [*control_lines(study, controls), ""]
    write_summary(regime.out, lines, study)
    return 0


def control_lines(study: Study, controls: Study) -> list[str]:
    """The unimodal-loss controls against joint training and against InfoReg and ARL, paired by seed
    across the two study files (same seeds, so the same initial weights and data order)."""
    title = "## Controls: the unimodal losses alone (controls.json), final-epoch test accuracy"
    return paired_lines(study, controls, title, "control", ("joint", "inforeg", "arl"))


def paired_lines(study: Study, extra: Study, title: str, label: str, references: Sequence[str]) -> list[str]:
    """A table of ``extra``'s candidates, each paired by seed with the main study's ``references``."""
    lines = [
        title,
        "",
        f"| {label} | seeds | test_acc | " + " | ".join(f"minus {r}" for r in references) + " |",
        "|---|---|---|" + "---|" * len(references),
    ]
    for candidate in extra.candidates:
        seeds = [s for s in extra.seeds if (candidate.name, s) in extra.runs and ("joint", s) in study.runs]
        if len(seeds) < 2:
            continue
        values = [100 * extra.runs[(candidate.name, s)]["metrics"]["test_acc"] for s in seeds]
        cells = []
        for reference in references:
            if any((reference, s) not in study.runs for s in seeds):
                cells.append("—")
                continue
            other = [100 * study.runs[(reference, s)]["metrics"]["test_acc"] for s in seeds]
            d = paired_difference(values, other)
            low, high = d.interval if d.interval is not None else (float("nan"), float("nan"))
            cells.append(f"{d.mean:+.1f} [{low:+.1f}, {high:+.1f}] {d.verdict}")
        mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
        lines.append(f"| {candidate.name} | {len(seeds)} | {mean:.1f} ± {sd:.1f} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    raise SystemExit(run_timed(main))
