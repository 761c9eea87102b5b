"""PDMP where the paper made its claim: SGD at learning rate 1e-3 (momentum 0.9), trained long.

    python -m benchmarks.paper_regime --regime audio_dominant --threads 1
    python -m benchmarks.paper_regime --regime under_optimization --threads 1

The field's base setting (OGM-GE's and the PDMP authors' code) is SGD with lr 1e-3; the paper's gammas
(10-15) were chosen there. The other benchmarks train at lr 0.05 for 10 epochs, where a gamma of 10 is
a much larger step. Here joint training, PDMP at its defaults (10, 0.5, one warm-up epoch), uniform
scaling of every encoder by 10 (the control that separates prioritising from a larger step), the
adaptive rule (:class:`pdmp.AdaptivePDMP`, its defaults, untuned) and the adaptive rule with auxiliary
losses (the configuration :mod:`benchmarks.adaptive_rules` chose on its tuning seeds) train for ``--epochs`` epochs
(cosine decay) on one built-in AV-digits regime (torch, CNN encoders, concat), paired by seed.

Nothing is tuned, so every seed is an evaluation seed. The ranking is the main benchmark's stage-1
ranking (``benchmarks/reported/main``). Written under ``--out`` (default
``results/paper-regime/<regime>``): ``evaluation.json`` (resumable), per-run learning curves in
``curves/`` (to judge convergence), ``summary.md`` and a plot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

import pdmp
from benchmarks.adaptive_rules import chosen_rule
from benchmarks.gamma_search import make_train
from benchmarks.study_cli import (
    add_common_arguments,
    finished_part,
    machine_line,
    merge_seeds,
    prepare,
    run_timed,
    write_summary,
)
from pdmp.compare import Candidate, Study, compare, default_candidates


def candidates(ranking: pdmp.Ranking) -> list[Candidate]:
    """joint, PDMP (10, 0.5), uniform x10 (all with one warm-up epoch), the untuned adaptive rule without
    and with auxiliary losses (the configuration :mod:`benchmarks.adaptive_rules` chose)."""
    defaults = default_candidates(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1)
    kept = [c for c in defaults if c.name in ("joint", "pdmp", "uniform")]
    return [*kept, Candidate("adaptive", pdmp.AdaptivePDMP.from_ranking(ranking)), chosen_rule(ranking)]


def curve_path(out: Path, name: str, seed: int) -> Path:
    return out / "curves" / f"{name}-seed{seed}.json"


def convergence_table(out: Path, study: Study, epochs: int) -> str:
    """Mean validation accuracy at a quarter, half, three quarters and the end of training, and the
    final training accuracy: whether the runs had converged when they stopped."""
    marks = sorted({max(0, epochs * k // 4 - 1) for k in (1, 2, 3, 4)})
    header = "| candidate | " + " | ".join(f"val_acc @ epoch {m + 1}" for m in marks) + " | final train_acc |"
    lines = [header, "|---" * (len(marks) + 2) + "|"]
    for candidate in study.candidates:
        curves = []
        for seed in study.seeds:
            path = curve_path(out, candidate.name, seed)
            if path.exists():
                curves.append(json.loads(path.read_text()))
        if not curves:
            continue
        cells = [f"{100 * np.mean([c['val_acc'][m] for c in curves]):.1f}" for m in marks]
        train_acc = 100 * np.mean([c["train_acc"][-1] for c in curves])
        lines.append(f"| {candidate.name} | " + " | ".join(cells) + f" | {train_acc:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, seeds=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD base learning rate (momentum 0.9)")
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from the saved runs")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="with --report-only: first fold in the runs and curves of these output folders (the same "
        "candidates on other seeds, run side by side in other processes)",
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=None,
        help="train only these candidates (default: all; joint, the reference, is always trained)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 4:
        parser.error(f"--epochs {args.epochs}: the paper's regime trains long; use at least 4")
    regime = prepare(args, "paper-regime")
    out = regime.out
    (out / "curves").mkdir(exist_ok=True)
    if args.merge and not args.report_only:
        parser.error("--merge goes with --report-only (it folds finished runs in; it trains nothing)")
    if args.report_only:
        if args.merge:
            merge_seeds(out / "evaluation.json", [folder / "evaluation.json" for folder in args.merge])
            for curve in (path for folder in args.merge for path in (folder / "curves").glob("*.json")):
                if not (out / "curves" / curve.name).exists():
                    shutil.copy2(curve, out / "curves" / curve.name)
        study = finished_part(out / "evaluation.json")
    else:
        chosen = candidates(regime.ranking)
        if args.candidates:
            unknown = sorted(set(args.candidates) - {c.name for c in chosen})
            if unknown:
                parser.error(f"unknown candidate(s) {unknown}; choose from {[c.name for c in chosen]}")
            chosen = [c for c in chosen if c.name == "joint" or c.name in args.candidates]
        names = {json.dumps(c.policy.get_config(), sort_keys=True): c.name for c in chosen}

        def keep_curve(policy: pdmp.CoefficientPolicy, seed: int, result: dict[str, Any]) -> None:
            history = result["history"]
            curve = {
                "val_acc": [record["val"]["acc"] for record in history],
                "train_acc": [record["train_acc"] for record in history],
                "train_loss": [record["train_loss"] for record in history],
                "coefficients": [record["coefficients"] for record in history],
            }
            curve_path(out, names[json.dumps(policy.get_config(), sort_keys=True)], seed).write_text(json.dumps(curve))

        train = make_train(regime.dataset_name, regime.load_data(args.subset), lr=args.lr, on_result=keep_curve)
        study = compare(
            train,
            chosen,
            args.seeds,
            path=out / "evaluation.json",
            train_options={"budget": args.epochs},
        )
    command = " ".join(["python -m benchmarks.paper_regime", *(argv if argv is not None else sys.argv[1:])])
    total = sum(run["wall_time_s"] for run in study.runs.values()) / 60
    joint_runs = [study.runs[("joint", s)]["wall_time_s"] for s in study.seeds if ("joint", s) in study.runs]
    lines = [
        f"# The paper's regime: av_digits {args.regime} (torch, CNN, concat, SGD lr {args.lr}, momentum 0.9, "
        f"{args.epochs} epochs, cosine decay)",
        "",
        f"Command: `{command}`. Ranking: `{regime.ranking_file.name}` ({' > '.join(regime.ranking.order)}). "
        f"Seeds {study.seeds} (nothing tuned).",
        "",
        "## Final-epoch test accuracy, paired against joint training",
        "",
        study.to_markdown("test_acc"),
        "",
        "## The same, paired against PDMP at its defaults",
        "",
        study.to_markdown("test_acc", reference="pdmp"),
        "",
        "## Test accuracy at the best-validation epoch, paired against joint training",
        "",
        study.to_markdown("test_acc_at_best_val"),
        "",
        "## Convergence (means over seeds)",
        "",
        convergence_table(out, study, args.epochs),
        "",
        machine_line(
            total, args.threads, f" ({np.mean(joint_runs) / 60 if joint_runs else float('nan'):.1f} min per joint run)"
        ),
    ]
    write_summary(out, lines, study)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_timed(main))
