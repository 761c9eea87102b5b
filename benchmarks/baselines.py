"""PDMP against the balancing methods it is compared with: OGM-GE, AGM, MMPareto, InfoReg and ARL.

    python -m benchmarks.baselines --regime audio_dominant --threads 1
    python -m benchmarks.baselines --regime image_dominant --threads 1
    python -m benchmarks.baselines --regime under_optimization --threads 1

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

Written under ``--out`` (default ``results/baselines/<regime>``): ``evaluation.json`` (resumable),
``summary.md`` and a plot.
"""

from __future__ import annotations

import argparse
import sys

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
from pdmp.compare import Candidate, compare

INFOREG_STRENGTH = {"audio": 0.95, "image": 0.1}  # the reference's audio / visual constants (CREMA-D)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, seeds=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from the saved runs")
    args = parser.parse_args(argv)
    regime = prepare(args, "baselines")
    if args.report_only:
        study = finished_part(regime.out / "evaluation.json")
    else:
        train = make_train(regime.dataset_name, regime.load_data(args.subset))
        study = compare(
            train,
            candidates(regime.ranking),
            args.seeds,
            path=regime.out / "evaluation.json",
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
        "## Test accuracy at the best-validation epoch, paired against PDMP",
        "",
        study.to_markdown("test_acc_at_best_val", reference="pdmp"),
        "",
        machine_line(total, args.threads, f" ({np.mean(joint) / 60 if joint else float('nan'):.1f} min per joint run)"),
    ]
    write_summary(regime.out, lines, study)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_timed(main))
