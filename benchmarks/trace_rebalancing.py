"""Why a rebalancing method trains badly in the baselines benchmark: its per-epoch trace beside controls.

``python -m benchmarks.trace_rebalancing --regime audio_dominant`` trains, on one seed (the tuning seed
100 by default, not an evaluation seed) and on the baselines benchmark's setting (CNN, concat, SGD lr 0.05,
momentum 0.9, 10 epochs), each method at the benchmark's configuration together with variants that each
change one thing, so the trace separates the method from the setting and from the port:

- G-Blending as benchmarked (weights re-estimated every 2 epochs), and with its first-super-epoch equal
  weights kept for the whole run (no estimation): if both are low, the loss composition (the fused term at
  weight 1/3) is the cause, not the weight estimates;
- MLA with its head projection firing (the reference's arithmetic as written), without it (the published
  code's behaviour, where it never fires; the library's default), and, projection firing, with fixed equal
  fusion weights instead of the entropy weights and at the reference's learning rate 1e-3 (lr x 0.02);
- AGM (which failed in most runs of the baselines benchmark) as benchmarked, with its coefficients held at
  1 (alpha 1e-6: only its masked passes and the reference's gradient clipping remain), and at lr 1e-3;
- joint training at lr 0.05 and at lr 1e-3, as the references of the same seed.

Every epoch records the training loss, the fused validation accuracy, each modality's accuracy from its own
logits (``decomposed_acc``), the loss-term weights, MLA's fusion weights, the epoch-boundary events and a
gradient policy's mean coefficients.
Written under ``--out`` (default ``results/trace-rebalancing/<regime>``): ``trace.json`` (a finished variant
is not trained again) and ``trace.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pdmp
from benchmarks.baselines import GBLENDING_SUPER_EPOCH
from benchmarks.gamma_search import make_train
from benchmarks.study_cli import LR, REGIMES, prepare, run_timed


class RecordingGBlending(pdmp.GBlending):
    """G-Blending that also keeps every checkpoint's inputs (each term's mean training and held-out loss),
    so the trace shows the generalisation gain and overfitting growth behind each new set of weights."""

    def reset(self) -> None:
        super().reset()
        self.recorded: list[dict[str, Any]] = []

    def checkpoint(
        self, epochs_done: int, train: Mapping[str, float], held_out: Mapping[str, float]
    ) -> dict[str, float]:
        weights = super().checkpoint(epochs_done, train, held_out)
        self.recorded.append(
            {"epochs_done": epochs_done, "train": dict(train), "held_out": dict(held_out), "weights": weights}
        )
        return weights


TUNING_SEED = 100


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    make: Callable[[Sequence[str]], pdmp.CoefficientPolicy | None]
    lr_scale: float = 1.0


def variants(epochs: int) -> list[Variant]:
    return [
        Variant("joint", "joint training", lambda m: None),
        Variant("joint_lr1e-3", "joint training at lr 1e-3", lambda m: None, 0.001 / LR),
        Variant(
            "gblending",
            f"as benchmarked (weights every {GBLENDING_SUPER_EPOCH} epochs)",
            lambda m: RecordingGBlending(m, super_epoch=GBLENDING_SUPER_EPOCH),
        ),
        Variant(
            "gblending_equal",
            "equal weights kept (no estimation)",
            lambda m: RecordingGBlending(m, super_epoch=epochs + 1),
        ),
        Variant(
            "mla_projected",
            "head projection firing ('code', the reference's arithmetic), entropy fusion",
            lambda m: pdmp.MLA(m, projection="code"),
        ),
        Variant("mla", "projection off (the published code, the default)", lambda m: pdmp.MLA(m, projection="off")),
        Variant(
            "mla_projected_fixed_fusion",
            "projection firing, equal fixed fusion weights",
            lambda m: pdmp.MLA(m, projection="code", fusion="fixed"),
        ),
        Variant(
            "mla_projected_lr1e-3",
            "projection firing, at lr 1e-3 (the reference's)",
            lambda m: pdmp.MLA(m, projection="code"),
            0.001 / LR,
        ),
        Variant("agm", "AGM as benchmarked (alpha 1, the reference's clipping)", lambda m: pdmp.AGM(m)),
        Variant(
            "agm_alpha1e-6",
            "AGM with alpha 1e-6: coefficients 1, the masked passes and the reference's clipping kept",
            lambda m: pdmp.AGM(m, alpha=1e-6),
        ),
        Variant(
            "agm_lr1e-3", "AGM as benchmarked at lr 1e-3 (the reference's range)", lambda m: pdmp.AGM(m), 0.001 / LR
        ),
    ]


def epoch_row(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a history record the trace keeps."""
    rebalancing = record.get("rebalancing") or {}
    return {
        "epoch": record["epoch"],
        "train_loss": record["train_loss"],
        "train_acc": record["train_acc"],
        "val_acc": record["val"]["acc"],
        "val_decomposed_acc": record["val"].get("decomposed_acc"),
        "val_dependency": record["val"].get("dependency"),
        "loss_weights": rebalancing.get("loss_weights"),
        "fusion_weights": rebalancing.get("fusion_weights"),
        "coefficients": record.get("coefficients"),
        "events": rebalancing.get("events"),
    }


def _fmt(mapping: dict[str, float] | None) -> str:
    if not mapping:
        return ""
    return ", ".join(f"{key} {value:.2f}" for key, value in mapping.items())


def checkpoint_table(checkpoints: Sequence[Mapping[str, Any]]) -> list[str]:
    """G-Blending's checkpoints: each term's held-out gain ``dG`` and overfitting growth ``dO`` since the
    previous checkpoint (``O`` = held-out minus training loss) and the weights they gave."""
    lines = [
        "G-Blending's checkpoints (mean losses over the training and held-out splits):",
        "",
        "| after epoch | term | train loss | held-out loss | dG | dO | weight |",
        "|---|---|---|---|---|---|---|",
    ]
    previous = None
    for point in checkpoints:
        for term, train_loss in point["train"].items():
            held = point["held_out"][term]
            if previous is None:
                gain = growth = ""
            else:
                gain = f"{previous['held_out'][term] - held:+.4f}"
                before = previous["held_out"][term] - previous["train"][term]
                growth = f"{(held - train_loss) - before:+.4f}"
            lines.append(
                f"| {point['epochs_done']} | {term} | {train_loss:.4f} | {held:.4f} | {gain} | {growth} | "
                f"{point['weights'][term]:.3g} |"
            )
        previous = point
    return lines


def markdown(trace: dict[str, Any], command: str) -> str:
    lines = [
        f"# Rebalancing trace: av_digits {trace['regime']}, seed {trace['seed']} (CNN, concat, SGD lr {LR}, "
        f"{trace['epochs']} epochs)",
        "",
        f"Command: `{command}`. "
        + (
            "One seed (a tuning seed, not an evaluation seed): a diagnosis, not a result."
            if trace["seed"] == TUNING_SEED
            else f"Seed {trace['seed']}, an evaluation seed of the baselines studies, traced to see why a run there "
            "failed: a diagnosis; nothing is chosen from it."
        ),
        "Accuracies are fractions. For MLA the loss-weight column shows each step's last pass (every pass "
        "trains one modality through the shared head); its fusion weights are the training batches' entropy "
        "weights.",
        "",
        "| variant | what | final val acc | final test acc |",
        "|---|---|---|---|",
    ]
    for name, run in trace["variants"].items():
        lines.append(f"| {name} | {run['what']} | {run['val_acc']:.3f} | {run['test_acc']:.3f} |")
    for name, run in trace["variants"].items():
        lines += [
            "",
            f"## {name}: {run['what']}",
            "",
            "| epoch | train loss | train acc | val acc | val acc per modality | loss weights | fusion weights | "
            "coefficients |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in run["epochs"]:
            lines.append(
                f"| {row['epoch']} | {row['train_loss']:.3f} | {row['train_acc']:.3f} | {row['val_acc']:.3f} | "
                f"{_fmt(row['val_decomposed_acc'])} | {_fmt(row['loss_weights'])} | {_fmt(row['fusion_weights'])} | "
                f"{_fmt(row.get('coefficients'))} |"
            )
        if run.get("checkpoints"):
            lines += ["", *checkpoint_table(run["checkpoints"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", required=True, choices=list(REGIMES))
    parser.add_argument("--seed", type=int, default=TUNING_SEED, help="default: the tuning seed 100")
    parser.add_argument("--epochs", type=int, default=10)
    names = [v.name for v in variants(1)]  # the names do not depend on the budget
    parser.add_argument("--only", nargs="+", default=None, choices=names, help="variant names to train (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--subset", type=float, default=None, help="fraction of each split (quick checks only)")
    parser.set_defaults(ranking=None)  # prepare() loads the setting's own ranking
    args = parser.parse_args(argv)
    regime = prepare(args, "trace-rebalancing")
    path = regime.out / "trace.json"
    trace: dict[str, Any] = {"regime": args.regime, "seed": args.seed, "epochs": args.epochs, "variants": {}}
    if path.exists():
        stored = json.loads(path.read_text())
        if (stored["regime"], stored["seed"], stored["epochs"]) != (args.regime, args.seed, args.epochs):
            raise SystemExit(
                f"{path} holds a trace of regime {stored['regime']}, seed {stored['seed']}, {stored['epochs']} "
                "epochs; pass another --out for these options"
            )
        trace = stored
    captured: dict[str, Any] = {}
    data = regime.load_data(args.subset)
    train = make_train(regime.dataset_name, data, on_result=lambda policy, seed, result: captured.update(result))
    modalities = tuple(data.modalities)
    chosen = [v for v in variants(args.epochs) if args.only is None or v.name in args.only]
    for index, variant in enumerate(chosen, 1):
        if variant.name in trace["variants"]:
            continue
        policy = variant.make(modalities)
        metrics = train(policy, args.seed, budget=args.epochs, lr_scale=variant.lr_scale)
        trace["variants"][variant.name] = {
            "what": variant.what,
            "lr_scale": variant.lr_scale,
            **metrics,
            "epochs": [epoch_row(record) for record in captured["history"]],
            "checkpoints": getattr(policy, "recorded", None),
        }
        path.write_text(json.dumps(trace, indent=1))
        print(f"[{index}/{len(chosen)}] {variant.name}: val {metrics['val_acc']:.3f}, test {metrics['test_acc']:.3f}")
    command = " ".join(["python -m benchmarks.trace_rebalancing", *(argv if argv is not None else sys.argv[1:])])
    text = markdown(trace, command)
    (regime.out / "trace.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_timed(main))
