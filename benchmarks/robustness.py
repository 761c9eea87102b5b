"""Robustness to missing and noised modalities at test time, with and without modality dropout in training.

    python -m benchmarks.robustness --regime audio_dominant --threads 1
    python -m benchmarks.robustness --regime image_dominant --threads 1
    python -m benchmarks.robustness --regime under_optimization --threads 1
    # attention fusion (joint, PDMP, uniform, ARL, the recipe; no dropout variants, no UME):
    python -m benchmarks.robustness --regime audio_dominant --fusion attention --without-dropout --threads 1
    python -m benchmarks.robustness --regime under_optimization --fusion attention --without-dropout --threads 1
    python -m benchmarks.robustness --regime audio_dominant --report-only   # summary.md from the saved runs

One built-in AV-digits regime (torch, CNN encoders, the main benchmark's recipe: SGD lr 0.05, momentum
0.9, 10 epochs, cosine decay; the under-optimization regime's wide MLP image encoder), seeds 0-4 by
default. Candidates: joint training, PDMP (10, 0.5, one warm-up epoch, the main benchmark's ranking),
uniform scaling x10 (PDMP's control), ARL (one warm-up epoch), the recipe (:func:`pdmp.recipe`, its
default variant, chosen on tuning seed 100) and each of them again with modality dropout
(``<name>+dropout``: every sample's modality dropped with probability ``--dropout-rate``, never both,
replaced by zeros, :class:`pdmp.robustness.ModalityDropout`), and UME (:func:`pdmp.unimodal_ensemble` of
one unimodal model per modality trained on the same recipe; a missing modality's model sees the same
replaced input). Dropout does not apply to UME (its models never see the other modality).

``--fusion attention`` trains :class:`benchmarks.models_attention_torch.AttentionFusionNet` (cross-modal
self-attention over one token per modality) instead of concat; ARL and the recipe then read unimodal
heads (:mod:`benchmarks.models_attention`).

Every trained model is scored on the test split (:func:`pdmp.backends.torch.evaluate_robustness`) with
every modality present (``test:full``), each modality missing (zeros, and the training mean) and each
noised (Gaussian at 0 and 10 dB SNR, ``--snrs``): accuracy and macro-F1 per condition. Concat-fused runs
also record each modality's dependency share on the full test inputs (``share/<m>``).

The hypothesis tested, not assumed: prioritising the dominant modality makes the model depend on it
more, so it degrades less when the weak modality is missing and more when the dominant one is; the
dependency share should predict it. ``summary.md`` reports, per candidate, the accuracy drop with the
dominant and with the weak modality missing, PDMP minus joint on each (paired 95% Student-t), and the
correlation over runs between the dominant modality's share and the difference of the two drops.

Written under ``--out`` (default ``results/robustness/<regime>``, with ``-attention`` for attention
fusion): ``evaluation.json`` (resumable, :func:`pdmp.compare`), ``summary.md`` and a plot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import pdmp
from benchmarks.protocol import ENCODER_OVERRIDES, TrainConfig, modulation_mode
from benchmarks.study_cli import add_common_arguments, finished_part, machine_line, prepare, run_timed, write_summary
from pdmp.compare import Candidate, Study, compare
from pdmp.robustness import Condition, ModalityDropout, robustness_conditions, training_means
from pdmp.stats import paired_difference

LR = 0.05
DROPOUT_RATE = 0.3
SNRS_DB = (0.0, 10.0)
FUSIONS = ("concat", "attention")
#: The recipe's variant was chosen on this tuning seed (benchmarks/README, "Default recipe").
RECIPE_TUNING_SEEDS = (100,)


def candidates(
    ranking: pdmp.Ranking, *, fusion: str = "concat", dropout: float | None = DROPOUT_RATE
) -> list[Candidate]:
    """joint, PDMP, uniform x10, ARL and the recipe, each with ``{"dropout": rate}`` too unless ``dropout``
    is None, and UME (concat studies only: it fuses nothing)."""
    names = ranking.order
    base = [
        ("joint", pdmp.NoModulation(names), ()),
        ("pdmp", pdmp.PDMP.from_ranking(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1), ("uniform",)),
        ("uniform", pdmp.UniformScaling(names, 10.0, warmup=1), ()),
        ("arl", pdmp.ARL(names, warmup=1), ()),
        ("recipe", pdmp.recipe(ranking), ()),
    ]
    result = []
    for name, policy, controls in base:
        tuned = RECIPE_TUNING_SEEDS if name == "recipe" else ()
        result.append(Candidate(name, policy, tuned_on=tuned, controls=controls))
        if dropout is not None:
            result.append(
                Candidate(
                    f"{name}+dropout",
                    policy,
                    {"dropout": float(dropout)},
                    tuned_on=tuned,
                    controls=tuple(f"{c}+dropout" for c in controls),
                )
            )
    if fusion == "concat":
        result.append(Candidate("ume", pdmp.NoModulation(names), {"ensemble": True}))
    return result


def conditions_for(modalities: Sequence[str], snrs: Sequence[float]) -> list[Condition]:
    return robustness_conditions(modalities, replacements=("zeros", "mean"), snrs_db=snrs)


def make_train(
    data: Any,
    dataset_name: str,
    *,
    fusion: str = "concat",
    snrs: Sequence[float] = SNRS_DB,
    subset: float | None = None,
    device: str = "cpu",
) -> Any:
    """``train(policy, seed, budget, dropout=0.0, ensemble=False) -> metrics`` (see the module).

    ``subset`` is only checked against the ``subset`` option :func:`pdmp.compare` passes (``data`` is
    already that fraction), like ``snrs_db`` and ``fusion_kind``: all three are in the run's identity."""
    import torch

    from benchmarks import train_torch
    from benchmarks.models_attention_torch import AttentionFusionNet, attention_step
    from benchmarks.models_torch import FusionNet
    from pdmp.backends.torch import Modulator, apply_modality_dropout, dependency_shares, evaluate_robustness
    from pdmp.backends.torch import training_step as torch_training_step

    names = tuple(data.modalities)
    classes = len(data.class_names)
    means = training_means({m: np.asarray(data.train.inputs[m]) for m in names})
    test_x = {m: np.asarray(data.test.inputs[m]) for m in names}
    test_y = np.asarray(data.test.labels)
    val_x = {m: torch.as_tensor(np.asarray(data.val.inputs[m]), device=device) for m in names}
    val_y = np.asarray(data.val.labels)
    conditions = conditions_for(names, snrs)

    def config(budget: int) -> TrainConfig:
        return TrainConfig(
            epochs=int(budget),
            lr=LR,
            encoder="cnn",
            width=32,
            device=device,
            batch_size=64,
            encoder_overrides=ENCODER_OVERRIDES.get(dataset_name, {}),
        )

    def build(modalities: tuple[str, ...], cfg: TrainConfig, seed: int) -> Any:
        model = train_torch.build_model(data, modalities, cfg, seed)
        if fusion == "attention" and isinstance(model, FusionNet):
            # The encoders start where the concat model's do; the fusion's weights are drawn after them.
            model = AttentionFusionNet(dict(model.encoders.items()), classes).to(device)
        return model

    def fit(
        modalities: tuple[str, ...], policy: pdmp.CoefficientPolicy | None, seed: int, budget: int, rate: float
    ) -> Any:
        cfg = config(budget)
        model = build(modalities, cfg, seed)
        train_x = {m: torch.as_tensor(np.asarray(data.train.inputs[m]), device=device) for m in modalities}
        train_y = torch.as_tensor(np.asarray(data.train.labels), device=device)
        optimizer = train_torch.make_optimizer(model, cfg)
        modulator = None
        if policy is not None:
            mode = modulation_mode(cfg, policy)
            modulator = Modulator(dict(model.encoders.items()), policy, mode=mode, optimizer=optimizer)
            if isinstance(policy, pdmp.ARL | pdmp.AGM):
                optimizer.register_step_pre_hook(train_torch.reference_clipping(model, policy))
        steps = -(-train_y.shape[0] // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
        generator = torch.Generator().manual_seed(seed)
        dropout = ModalityDropout(modalities, rate, seed=seed + 104729) if rate > 0 else None
        mean_tensors = {m: torch.as_tensor(means[m], dtype=train_x[m].dtype, device=device) for m in modalities}
        model.train()
        for epoch in range(cfg.epochs):
            if modulator is not None:
                modulator.set_epoch(epoch)
            for index in torch.randperm(train_y.shape[0], generator=generator).split(cfg.batch_size):
                index = index.to(device)
                inputs = {m: x[index] for m, x in train_x.items()}
                if dropout is not None:
                    inputs = apply_modality_dropout(inputs, dropout.mask(len(index)), train_means=mean_tensors)
                y = train_y[index]
                if modulator is None:
                    optimizer.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(inputs[modalities[0]]), y).backward()
                    optimizer.step()
                elif isinstance(model, AttentionFusionNet):
                    attention_step(model, modulator, optimizer, inputs, y)
                else:
                    torch_training_step(
                        modulator,
                        optimizer,
                        inputs,
                        y,
                        encode=model.encode,
                        fuse=model.fuse,
                        head=model.head,
                        unimodal_heads=getattr(model, "unimodal_heads", None),
                    )
                schedule.step()
        if modulator is not None:
            modulator.remove()
        return model.eval()

    def val_accuracy(predict: Any) -> float:
        with torch.no_grad():
            return pdmp.accuracy(val_y, predict(val_x).double().cpu().numpy())

    def train(
        policy: pdmp.CoefficientPolicy,
        seed: int,
        budget: int = 10,
        dropout: float = 0.0,
        ensemble: bool = False,
        snrs_db: Sequence[float] | None = None,
        fusion_kind: str | None = None,
        data_subset: float | None = None,
    ) -> dict[str, float]:
        # These come from compare's train_options, so that a resume under other ones is refused.
        if (snrs_db is not None and list(snrs_db) != list(snrs)) or fusion_kind not in (None, fusion):
            raise ValueError(f"this train function is for {fusion} fusion at SNRs {list(snrs)} dB")
        if data_subset != subset:
            raise ValueError(f"this train function's data is the fraction {subset}, not {data_subset}")
        shares: dict[str, float] = {}
        if ensemble:
            models = {m: fit((m,), None, seed, budget, 0.0) for m in names}

            def predict(inputs: Mapping[str, Any]) -> Any:
                logits = {m: models[m](inputs[m]).double().cpu().numpy() for m in names}
                return torch.from_numpy(pdmp.unimodal_ensemble(logits, inputs="logits"))

        else:
            model = fit(names, policy, seed, budget, float(dropout))

            def predict(inputs: Mapping[str, Any]) -> Any:
                return model(inputs)[0]

            if isinstance(model, FusionNet):
                with torch.no_grad():
                    shares = dependency_shares(dict(model.encoders.items()), model.head, (test_x, test_y)).share
        table = evaluate_robustness(predict, test_x, test_y, conditions=conditions, train_means=means, seed=seed)
        metrics = {"val_acc": val_accuracy(predict), **table.metrics("test:")}
        metrics.update({f"share/{m}": value for m, value in shares.items()})
        return metrics

    return train


def _drop(study: Study, name: str, modality: str, seed: int) -> float:
    run = study.runs[(name, seed)]["metrics"]
    return 100 * (run["test:full/acc"] - run[f"test:missing[{modality}]/zeros/acc"])


def _interval(values: Sequence[float], other: Sequence[float]) -> str:
    d = paired_difference(values, other)
    low, high = d.interval if d.interval is not None else (float("nan"), float("nan"))
    return f"{d.mean:+.1f} [{low:+.1f}, {high:+.1f}] {d.verdict}"


def condition_table(study: Study, conditions: Sequence[Condition]) -> list[str]:
    """Mean ± sd test accuracy (points) per candidate and condition."""
    header = "| candidate | seeds | " + " | ".join(c.name for c in conditions) + " |"
    lines = [header, "|" + "---|" * (len(conditions) + 2)]
    for candidate in study.candidates:
        cells = []
        for c in conditions:
            values = [100 * v for v in study.values(candidate.name, f"test:{c.name}/acc").values()]
            sd = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.1f}{sd}" if values else "—")
        seeds = len(study.values(candidate.name, "test:full/acc"))
        lines.append(f"| {candidate.name} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def hypothesis_lines(study: Study, ranking: pdmp.Ranking) -> list[str]:
    """Drops with the dominant and the weak modality missing (zeros); PDMP minus joint on each; the
    correlation between the dominant modality's share and the difference of the drops."""
    dominant, weak = ranking.order[0], ranking.order[-1]
    lines = [
        f"## Does prioritising the dominant modality ({dominant}) make the model depend on it?",
        "",
        f"Accuracy drop (points, full minus missing as zeros), mean over seeds; share: {dominant}'s dependency "
        "share on the full test inputs (concat runs).",
        "",
        f"| candidate | seeds | drop, {dominant} missing | drop, {weak} missing | share of {dominant} |",
        "|---|---|---|---|---|",
    ]
    for candidate in study.candidates:
        seeds = sorted(study.values(candidate.name, "test:full/acc"))
        if not seeds:
            continue
        strong = np.mean([_drop(study, candidate.name, dominant, s) for s in seeds])
        light = np.mean([_drop(study, candidate.name, weak, s) for s in seeds])
        share_key = f"share/{dominant}"
        shares = list(study.values(candidate.name, share_key).values()) if share_key in study.metrics else []
        share = f"{np.mean(shares):.2f}" if shares else "—"
        lines.append(f"| {candidate.name} | {len(seeds)} | {strong:.1f} | {light:.1f} | {share} |")
    for pdmp_name, joint_name in (("pdmp", "joint"), ("pdmp+dropout", "joint+dropout")):
        names = set(study.names)
        if not {pdmp_name, joint_name} <= names:
            continue
        seeds = [s for s in study.seeds if (pdmp_name, s) in study.runs and (joint_name, s) in study.runs]
        if len(seeds) < 2:
            continue
        on_dominant = _interval(*([_drop(study, n, dominant, s) for s in seeds] for n in (pdmp_name, joint_name)))
        on_weak = _interval(*([_drop(study, n, weak, s) for s in seeds] for n in (pdmp_name, joint_name)))
        lines += [
            "",
            f"{pdmp_name} minus {joint_name}, paired over seeds {seeds} (95% Student-t): drop with {dominant} "
            f"missing {on_dominant}; drop with {weak} missing {on_weak}.",
        ]
    pairs = [
        (run["metrics"][f"share/{dominant}"], _drop(study, name, dominant, seed) - _drop(study, name, weak, seed))
        for (name, seed), run in study.runs.items()
        if f"share/{dominant}" in run["metrics"]
    ]
    if len(pairs) >= 3 and np.std([p[0] for p in pairs]) > 0 and np.std([p[1] for p in pairs]) > 0:
        r = float(np.corrcoef(np.array(pairs).T)[0, 1])
        lines += [
            "",
            f"Over {len(pairs)} concat runs, the Pearson correlation between {dominant}'s share and (drop with "
            f"{dominant} missing minus drop with {weak} missing) is r = {r:+.2f}.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fusion", choices=FUSIONS, default="concat")
    parser.add_argument("--dropout-rate", type=float, default=DROPOUT_RATE)
    parser.add_argument("--without-dropout", action="store_true", help="leave out the <name>+dropout candidates")
    parser.add_argument("--snrs", type=float, nargs="+", default=list(SNRS_DB), help="noise SNRs in dB")
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from the saved runs")
    args = parser.parse_args(argv)
    folder = "robustness" if args.fusion == "concat" else "robustness-attention"
    regime = prepare(args, folder)
    chosen = candidates(regime.ranking, fusion=args.fusion, dropout=None if args.without_dropout else args.dropout_rate)
    path = regime.out / "evaluation.json"
    if args.report_only:
        study = finished_part(path)
    else:
        data = regime.load_data(args.subset)
        train = make_train(data, regime.dataset_name, fusion=args.fusion, snrs=args.snrs, subset=args.subset)
        options = {
            "budget": args.epochs,
            "snrs_db": list(args.snrs),
            "fusion_kind": args.fusion,
            "data_subset": args.subset,
        }
        study = compare(train, chosen, args.seeds, path=path, train_options=options)
    conditions = conditions_for(regime.ranking.order, args.snrs)
    given = list(argv if argv is not None else sys.argv[1:])
    # The command that trains the runs; a --report-only rebuild is named beside it.
    command = " ".join(["python -m benchmarks.robustness", *(a for a in given if a != "--report-only")])
    rebuilt = f" Tables rebuilt from the run file with `{command} --report-only`." if args.report_only else ""
    total = sum(run["wall_time_s"] for run in study.runs.values()) / 60
    dominant, weak = regime.ranking.order[0], regime.ranking.order[-1]
    lines = [
        f"# Robustness: av_digits {args.regime} (torch, CNN, {args.fusion} fusion, SGD lr {LR}, {args.epochs} epochs)",
        "",
        f"Command: `{command}`. Ranking: `{regime.ranking_file.name}` ({' > '.join(regime.ranking.order)}). "
        f"Seeds {study.seeds}. Modality dropout: rate {args.dropout_rate} per modality, zeros, never both.{rebuilt}",
        "",
        "## Test accuracy per condition (mean ± sd, points)",
        "",
        *condition_table(study, conditions),
        "",
        "## Every modality present, paired against joint training",
        "",
        study.to_markdown("test:full/acc", reference="joint"),
        "",
        f"## {dominant} (dominant) missing, as zeros, paired against joint training",
        "",
        study.to_markdown(f"test:missing[{dominant}]/zeros/acc", reference="joint"),
        "",
        f"## {weak} (weak) missing, as zeros, paired against joint training",
        "",
        study.to_markdown(f"test:missing[{weak}]/zeros/acc", reference="joint"),
        "",
        *hypothesis_lines(study, regime.ranking),
        "",
        machine_line(total, args.threads),
    ]
    write_summary(regime.out, lines, study, metric="test:full/acc")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_timed(main))
