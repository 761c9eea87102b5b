"""The default recipe (:func:`pdmp.recipe`) against every candidate, one study per setting.

    python -m benchmarks.default_recipe --stage select --setting mfeat --threads 1      # tuning seed 100
    python -m benchmarks.default_recipe --setting mfeat --seeds 0 1 2 3 4 --threads 1  # evaluation
    python -m benchmarks.default_recipe --stage confirm --setting mfeat --threads 1    # seeds 5-9
    python -m benchmarks.default_recipe --stage report                                 # every setting

Settings: the five of :data:`benchmarks.study_cli.SETTINGS` (three AV-digits regimes with CNN encoders
under SGD lr 0.05 for 10 epochs, the audio-dominant regime with transformer encoders under AdamW, mfeat)
and the paper's base setting (SGD lr 1e-3, momentum 0.9) in the audio-dominant (60 epochs) and
under-optimization (30 epochs) regimes, the budgets ``benchmarks.paper_regime`` used.

Stages (one resumable study file each under ``--out``, default ``results/default-recipe/<setting>``):

``select`` (tuning seeds, default 100; validation only): joint training at the learning-rate scales
x0.5, x1, x2, x5, x10 at the full budget (the tuned learning rate: best mean validation accuracy), the
recipe's variants (:data:`pdmp.recipes.VARIANTS`; one is chosen across the settings and fixed in
:data:`pdmp.recipes.DEFAULT` before any evaluation seed runs) and, for MSLR, each modality's unimodal model
at those scales (each modality's best scale is its learning-rate factor, :meth:`pdmp.MSLR.choose_scales`).
In the lr 1e-3 settings (their candidates include no tuned learning rate, and the variant was fixed
before they ran) select trains joint and the unimodal models only.

``evaluate`` (default seeds 0-4): joint; joint at the tuned learning rate; PDMP at its defaults (10,
0.5, one warm-up epoch); uniform scaling x10 and tuned (the gamma search's committed choice,
``benchmarks/reported/gamma-search/<setting>``, where there is one); ARL; InfoReg; MMPareto; the recipe;
MSLR (``keep`` and ``dynamic``); every unimodal model (the best one is the bar the recipe must not fall
below) and UME, the unimodal ensemble of those same runs (:func:`pdmp.unimodal_ensemble`; it trains
nothing itself: its cost is the unimodal runs'). The lr 1e-3 settings keep the candidates that decide
the question: joint, PDMP, uniform x10, ARL, UME (with the unimodal models), MSLR keep and the recipe.

``confirm`` (default seeds 5-9): the recipe, joint, the best unimodal model and the best candidate of
the evaluation seeds, as the decision rule in ``benchmarks/README.md`` ("Default recipe") fixes.

``report``: ``summary.md`` per setting and ``summary.md`` over all settings: per setting the recipe
minus the best candidate and minus the best unimodal model (final-epoch test accuracy and macro-F1,
paired 95% Student-t intervals), with verdicts and the recipe's wall time against joint training.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import pdmp
from benchmarks.baselines import INFOREG_STRENGTH
from benchmarks.protocol import ENCODER_OVERRIDES, TrainConfig
from benchmarks.study_cli import LR, ROOT, SETTINGS, Setting, complete_seeds, finished_part, machine_line
from pdmp.compare import Candidate, Study, compare
from pdmp.recipes import VARIANTS

#: Learning-rate scales of the tuned joint training and of MSLR's unimodal search (1 included).
LR_SCALES = (0.5, 1.0, 2.0, 5.0, 10.0)
GAMMA_SEARCH = ROOT / "reported" / "gamma-search"
REPORTED = ROOT / "reported" / "default-recipe"
METRICS = ("test_acc", "test_f1")


@dataclass(frozen=True)
class RecipeSetting:
    """A comparison setting: :class:`Setting` plus its base learning rate and epoch budget."""

    base: Setting
    lr: float | None  # None: the optimizer's default (SGD: LR, AdamW: 1e-3)
    epochs: int
    reduced: bool = False  # the lr 1e-3 settings: only the candidates that decide the question

    @property
    def recipe(self) -> str:
        if self.lr is None:
            return f"{self.base.recipe}, {self.epochs} epochs"
        base = f"{self.base.dataset}, torch, {self.base.encoder} encoders, concat"
        return f"{base}, SGD lr {self.lr:g}, momentum 0.9, {self.epochs} epochs"


SETTINGS_ALL: dict[str, RecipeSetting] = {
    **{name: RecipeSetting(setting, None, 10) for name, setting in SETTINGS.items()},
    "audio_dominant_lr1e-3": RecipeSetting(SETTINGS["audio_dominant"], 1e-3, 60, reduced=True),
    "under_optimization_lr1e-3": RecipeSetting(SETTINGS["under_optimization"], 1e-3, 30, reduced=True),
}


def load_data(setting: RecipeSetting, subset: float | None) -> Any:
    from benchmarks.run import load_dataset

    return load_dataset(setting.base.dataset, 0, subset)


def make_train(setting: RecipeSetting, data: Any, cache: Path) -> Callable[..., dict[str, float]]:
    """``train(policy, seed, budget, lr_scale=1.0, unimodal=None, ensemble=False) -> metrics``.

    ``unimodal=m``: modality m's unimodal model alone (its final validation and test logits are kept in
    ``cache`` for the ensemble); ``ensemble=True``: UME from the unimodal runs of that seed (trained
    first where missing). Metrics: final-epoch validation and test accuracy and macro-F1, and test
    accuracy at the best-validation epoch.
    """
    from benchmarks import train_torch

    optimizer = setting.base.optimizer
    base = {"lr": 1e-3, "weight_decay": 1e-2} if optimizer == "adamw" else {"lr": LR}
    if setting.lr is not None:
        base["lr"] = setting.lr
    labels = {split: np.asarray(getattr(data, split).labels) for split in ("val", "test")}

    def config(budget: int) -> TrainConfig:
        return TrainConfig(
            epochs=int(budget),
            optimizer=optimizer,
            **base,
            encoder=setting.base.encoder,
            width=32,
            device="cpu",
            batch_size=64,
            encoder_overrides=ENCODER_OVERRIDES.get(setting.base.dataset, {}),
        )

    def unimodal_logits(modality: str, seed: int, budget: int, lr_scale: float) -> dict[str, np.ndarray]:
        path = cache / f"{modality}-seed{seed}-epochs{budget}-lr{lr_scale:g}.npz"
        if path.exists():
            with np.load(path) as stored:
                return {split: stored[split] for split in ("val", "test")}
        result = train_torch.train_run(data, (modality,), config(budget), seed, lr_scale=lr_scale, return_logits=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **result["logits"])
        return result["logits"]

    def scores(logits: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {
            f"{split}_{name}": float(fn(labels[split], logits[split]))
            for split in ("val", "test")
            for name, fn in (("acc", pdmp.accuracy), ("f1", pdmp.macro_f1))
        }

    def train(
        policy: pdmp.CoefficientPolicy,
        seed: int,
        budget: int = 10,
        lr_scale: float = 1.0,
        unimodal: str | None = None,
        ensemble: bool = False,
    ) -> dict[str, float]:
        if ensemble:
            parts = {m: unimodal_logits(m, seed, budget, lr_scale) for m in data.modalities}
            probabilities = {
                split: pdmp.unimodal_ensemble({m: p[split] for m, p in parts.items()}, inputs="logits")
                for split in ("val", "test")
            }
            return scores(probabilities)
        if unimodal is not None:
            return scores(unimodal_logits(unimodal, seed, budget, lr_scale))
        result = train_torch.train_run(
            data, tuple(data.modalities), config(budget), seed, policy=policy, lr_scale=lr_scale
        )
        final, best = result["final"], result["best_val"]
        return {
            "val_acc": final["val"]["acc"],
            "val_f1": final["val"]["f1"],
            "test_acc": final["test"]["acc"],
            "test_f1": final["test"]["f1"],
            "test_acc_at_best_val": best["test"]["acc"],
        }

    return train


def unimodal_candidates(ranking: pdmp.Ranking, scales: Sequence[float] = (1.0,)) -> list[Candidate]:
    joint = pdmp.NoModulation(ranking.order)
    return [
        Candidate(f"unimodal_{m}" + ("" if s == 1.0 else f"[lr*{s:g}]"), joint, {"unimodal": m, "lr_scale": s})
        for m in ranking.order
        for s in scales
    ]


def select_candidates(setting: RecipeSetting, ranking: pdmp.Ranking) -> list[Candidate]:
    """joint at every learning-rate scale, the recipe's variants and the unimodal models at every scale
    (for MSLR); in a reduced setting (lr 1e-3, chosen after the variant was fixed and without a tuned
    learning rate among its candidates) joint and the unimodal models only."""
    names = ranking.order
    if setting.reduced:
        return [Candidate("joint", pdmp.NoModulation(names)), *unimodal_candidates(ranking, LR_SCALES)]
    joint = [Candidate("joint", pdmp.NoModulation(names))]
    joint += [Candidate(f"joint[lr*{s:g}]", pdmp.NoModulation(names), {"lr_scale": s}) for s in LR_SCALES if s != 1.0]
    variants = [Candidate(f"recipe_{name}", pdmp.recipe(ranking, name)) for name in VARIANTS]
    return [*joint, *variants, *unimodal_candidates(ranking, LR_SCALES)]


def mean_val(study: Study, name: str) -> float:
    return float(np.mean(list(study.values(name, "val_acc").values())))


def tuned_from_select(select: Study, ranking: pdmp.Ranking) -> list[Candidate]:
    """joint at the tuned learning rate and MSLR's per-modality scales, both from the select study."""
    seeds = tuple(select.seeds)
    options = [c for c in select.candidates if c.name == "joint" or c.name.startswith("joint[")]
    best = max(options, key=lambda c: mean_val(select, c.name))
    tuned = [Candidate("joint_lr_tuned", best.policy, best.options, tuned_on=seeds)]
    by_modality = {
        m: {
            float(c.options.get("lr_scale", 1.0)): mean_val(select, c.name)
            for c in select.candidates
            if c.options.get("unimodal") == m
        }
        for m in ranking.order
    }
    scales = pdmp.MSLR.choose_scales(by_modality)
    tuned += [
        Candidate("mslr_keep", pdmp.MSLR(ranking.order, scales, strategy="keep"), tuned_on=seeds),
        Candidate("mslr_dynamic", pdmp.MSLR(ranking.order, scales, strategy="dynamic"), tuned_on=seeds),
    ]
    return tuned


def searched_uniform(name: str) -> list[Candidate]:
    """The gamma search's tuned uniform scaling for this setting (``chosen.json`` or its evaluation study)."""
    folder = GAMMA_SEARCH / name
    if (folder / "chosen.json").exists():
        chosen = [Candidate.from_dict(item) for item in json.loads((folder / "chosen.json").read_text())]
    elif (folder / "evaluation.json").exists():
        chosen = list(Study.load(folder / "evaluation.json").candidates)
    else:
        return []
    return [c for c in chosen if c.name == "uniform_tuned"]


def evaluation_candidates(name: str, setting: RecipeSetting, ranking: pdmp.Ranking, select: Study) -> list[Candidate]:
    names = ranking.order
    tuned = {c.name: c for c in tuned_from_select(select, ranking)}
    chosen = replace(
        Candidate("recipe", pdmp.recipe(ranking)), tuned_on=tuple(select.seeds)
    )  # the variant was chosen on the tuning seeds
    joint = Candidate("joint", pdmp.NoModulation(names))
    pdmp_default = Candidate("pdmp", pdmp.PDMP.from_ranking(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1))
    uniform = Candidate("uniform", pdmp.UniformScaling(names, 10.0, warmup=1))
    arl = Candidate("arl", pdmp.ARL(names, warmup=1))
    ume = Candidate("ume", pdmp.NoModulation(names), {"ensemble": True})
    if setting.reduced:
        return [joint, pdmp_default, uniform, arl, chosen, tuned["mslr_keep"], *unimodal_candidates(ranking), ume]
    strength = {m: INFOREG_STRENGTH.get(m, 0.95) for m in names}
    return [
        joint,
        tuned["joint_lr_tuned"],
        pdmp_default,
        uniform,
        *searched_uniform(name),
        arl,
        Candidate("inforeg", pdmp.InfoReg(names, strength)),
        Candidate("mmpareto", pdmp.MMPareto(names)),
        chosen,
        tuned["mslr_keep"],
        tuned["mslr_dynamic"],
        *unimodal_candidates(ranking),
        ume,
    ]


def is_unimodal(name: str) -> bool:
    return name.startswith("unimodal_")


def best_by_mean(study: Study, names: Sequence[str], metric: str = "test_acc") -> str:
    return max(names, key=lambda n: float(np.mean(list(study.values(n, metric).values()))))


def confirmation_candidates(evaluation: Study) -> list[Candidate]:
    """The recipe, joint, the best unimodal model and the best other candidate on the evaluation seeds
    (by mean final-epoch test accuracy), as the README's decision rule fixes."""
    study = finished_part(evaluation)
    unimodal = best_by_mean(study, [n for n in study.names if is_unimodal(n)])
    others = [n for n in study.names if not is_unimodal(n) and n != "recipe"]
    best = best_by_mean(study, others)
    keep = {"recipe", "joint", unimodal, best}
    return [c for c in evaluation.candidates if c.name in keep]


def paired_cell(study: Study, subject: str, reference: str, metric: str) -> tuple[str, str | None, float]:
    difference = study.paired(subject, metric, reference=reference)
    mean = 100 * difference.mean
    if difference.interval is None:
        return f"{mean:+.1f} (n={difference.n})", None, mean
    low, high = difference.interval
    mark = {"better": " better", "worse": " **worse**"}.get(str(difference.verdict), "")
    return f"{mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{mark}", difference.verdict, mean


def mean_of(study: Study, name: str, metric: str) -> float:
    return 100 * float(np.mean(list(study.values(name, metric).values())))


def goal_lines(study: Study) -> tuple[list[str], dict[str, Any]]:
    """Per metric: the recipe minus the best candidate and minus the best unimodal model, and the goal."""
    lines = [
        "| metric | recipe | best candidate | recipe − best | best unimodal | recipe − best unimodal | goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    outcome: dict[str, Any] = {}
    for metric in METRICS:
        others = [n for n in study.names if not is_unimodal(n) and n != "recipe"]
        best = best_by_mean(study, others, metric)
        unimodal = best_by_mean(study, [n for n in study.names if is_unimodal(n)], metric)
        recipe_mean = mean_of(study, "recipe", metric)
        cell_best, verdict_best, diff_best = paired_cell(study, "recipe", best, metric)
        cell_uni, verdict_uni, _ = paired_cell(study, "recipe", unimodal, metric)
        met: bool | None = (
            recipe_mean >= mean_of(study, best, metric) or (diff_best >= -2.0 and verdict_best != "worse")
        ) and (verdict_uni != "worse")
        if {verdict_best, verdict_uni} & {None, "too few seeds"}:
            met = None  # the rule needs paired intervals, which fewer than 3 seeds cannot give
        outcome[metric] = met
        shown = {True: "yes", False: "no", None: "undecided (too few seeds)"}[met]
        lines.append(
            f"| {metric} | {recipe_mean:.1f} | {best} {mean_of(study, best, metric):.1f} | {cell_best} | "
            f"{unimodal} {mean_of(study, unimodal, metric):.1f} | {cell_uni} | {shown} |"
        )
    return lines, outcome


def wall_ratio(study: Study) -> str:
    if "joint" not in study.names:
        return "—"
    return f"{study.wall_time('recipe') / study.wall_time('joint'):.2f}x"


def setting_summary(name: str, out: Path) -> tuple[list[str], Study | None]:
    setting = SETTINGS_ALL[name]
    lines = [f"# Default recipe: {name} ({setting.recipe})", ""]
    study = None
    for stage in ("select", "evaluate", "confirm"):
        path = out / f"{stage}.json"
        if not path.exists():
            continue
        stored = Study.load(path)
        if stage == "select":
            lines += [f"## select: tuning seeds {stored.seeds}, final-epoch validation accuracy", ""]
            lines += [
                "| candidate | val_acc |",
                "|---|---|",
                *[
                    f"| {c.name} | {100 * mean_val(stored, c.name):.1f} |"
                    for c in stored.candidates
                    if stored.values(c.name, "val_acc")
                ],
                "",
            ]
            continue
        if not complete_seeds(stored):
            lines += [f"## {stage}: no seed finished by every candidate yet", ""]
            continue
        part = finished_part(stored)
        if stage == "evaluate":
            study = part
        lines += [f"## {stage}: seeds {part.seeds}", ""]
        if "recipe" in part.names:
            goal, _ = goal_lines(part)
            lines += [*goal, "", f"Recipe wall time vs joint: {wall_ratio(part)}.", ""]
        for metric in METRICS:
            lines += [f"### {metric}, paired against the recipe", "", part.to_markdown(metric, reference="recipe"), ""]
        minutes = sum(run["wall_time_s"] for run in stored.runs.values()) / 60
        lines += [machine_line(minutes, 1), ""]
    return lines, study


def variant_regrets(root: Path) -> list[str]:
    """The recipe variants' validation regret on the tuning seeds, per setting whose select study has
    trained every variant and every joint learning rate: the setting's best (variants and joint
    learning rates) minus the variant's, in points; the choice rule of ``benchmarks/README.md``."""
    variants = [f"recipe_{name}" for name in VARIANTS]
    joints = ["joint", *(f"joint[lr*{s:g}]" for s in LR_SCALES if s != 1.0)]
    header = "| setting | best (val_acc) | " + " | ".join(f"regret {v}" for v in variants) + " |"
    lines = [header, "|---" * (len(variants) + 2) + "|"]
    regrets: dict[str, list[float]] = {v: [] for v in variants}
    for name in SETTINGS_ALL:
        path = root / name / "select.json"
        if not path.exists():
            continue
        select = Study.load(path)
        if not all(select.values(n, "val_acc") for n in [*variants, *joints]):
            continue
        values = {n: 100 * mean_val(select, n) for n in [*variants, *joints]}
        best = max(values, key=values.__getitem__)
        for v in variants:
            regrets[v].append(values[best] - values[v])
        cells = " | ".join(f"{values[best] - values[v]:.1f}" for v in variants)
        lines.append(f"| {name} | {best} {values[best]:.1f} | {cells} |")
    if all(regrets.values()):
        lines.append(
            "| largest / mean | | " + " | ".join(f"{max(r):.1f} / {np.mean(r):.1f}" for r in regrets.values()) + " |"
        )
        chosen = min(variants, key=lambda v: (max(regrets[v]), float(np.mean(regrets[v]))))
        lines += ["", f"Smallest largest regret: **{chosen.removeprefix('recipe_')}**."]
    return lines


def confirmation(out: Path) -> Study | None:
    """The confirmation seeds' study, restricted to the seeds every candidate finished (None before)."""
    path = out / "confirm.json"
    if not path.exists():
        return None
    stored = Study.load(path)
    return finished_part(stored) if complete_seeds(stored) else None


def report(root: Path) -> str:
    lines = [
        "# Default recipe: every setting",
        "",
        "Final-epoch test accuracy and macro-F1 (points), evaluation seeds; paired 95% Student-t intervals. "
        "Goal: the recipe is the best candidate or within 2 points of its mean and not significantly below "
        "it, and not significantly below the best unimodal model. Built by "
        "`python -m benchmarks.default_recipe --stage report`.",
        "",
        "| setting | seeds | metric | recipe | best candidate | recipe − best | best unimodal | recipe − best unimodal "
        "| goal met | wall vs joint |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts: list[str] = []
    for name in SETTINGS_ALL:
        out = root / name
        text, study = setting_summary(name, out) if out.exists() else ([], None)
        if out.exists():
            (out / "summary.md").write_text("\n".join(text) + "\n")
        if study is None or "recipe" not in study.names:
            started = out / "evaluate.json"
            status = "not run"
            if started.exists():  # runs exist, but no seed on which every candidate finished
                status = f"incomplete ({len(Study.load(started).runs)} runs, no seed complete)"
            lines.append(f"| {name} | {status} | | | | | | | | |")
            continue
        goal, outcome = goal_lines(study)
        for row in goal[2:]:
            lines.append(f"| {name} | {len(study.seeds)} " + row + f" {wall_ratio(study)} |")
        confirmed = confirmation(out)
        if confirmed is None:
            so_far = {True: "met", False: "not met", None: "undecided"}[outcome["test_acc"]]
            verdicts.append(f"{name}: seeds 5-9 not run (evaluation seeds: {so_far})")
            continue
        confirm_goal, confirm_outcome = goal_lines(confirmed)
        for row in confirm_goal[2:]:
            lines.append(f"| {name}, seeds 5-9 | {len(confirmed.seeds)} " + row + f" {wall_ratio(confirmed)} |")
        both = (outcome["test_acc"], confirm_outcome["test_acc"])
        decided = "not met" if False in both else "undecided" if None in both else "met"
        verdicts.append(f"{name}: {decided} (seeds 0-4 and 5-9 must both meet it)")
    lines += ["", "Goal by the decision rule (final-epoch test accuracy): " + "; ".join(verdicts) + "."]
    lines += ["", "## The variant's choice (tuning seed, validation accuracy)", "", *variant_regrets(root)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("select", "evaluate", "confirm", "report"), default="evaluate")
    parser.add_argument("--setting", choices=list(SETTINGS_ALL))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 100 / 0-4 / 5-9 by stage")
    parser.add_argument("--out", type=Path, default=None, help="default: results/default-recipe/<setting>")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--subset", type=float, default=None, help="fraction of each split (quick checks only)")
    parser.add_argument("--epochs", type=int, default=None, help="override the setting's budget (quick checks only)")
    args = parser.parse_args(argv)
    if args.stage == "report":
        root = args.out or Path("results") / "default-recipe"
        text = report(root)
        (root / "summary.md").write_text(text)
        print(text)
        return 0
    if args.setting is None:
        parser.error(f"--stage {args.stage} needs --setting")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    setting = SETTINGS_ALL[args.setting]
    out = args.out or Path("results") / "default-recipe" / args.setting
    out.mkdir(parents=True, exist_ok=True)
    ranking = pdmp.Ranking.load(setting.base.ranking_file)
    epochs = args.epochs or setting.epochs
    seeds = args.seeds or {"select": [100], "evaluate": [0, 1, 2, 3, 4], "confirm": [5, 6, 7, 8, 9]}[args.stage]
    data = load_data(setting, args.subset)
    train = make_train(setting, data, out / "unimodal-logits")
    if args.stage == "select":
        candidates = select_candidates(setting, ranking)
    else:
        select_file = out / "select.json"
        if not select_file.exists():
            parser.error(f"{select_file} is missing: run --stage select first (it tunes joint's lr and MSLR's)")
        select = finished_part(select_file)
        if args.stage == "evaluate":
            candidates = evaluation_candidates(args.setting, setting, ranking, select)
        else:
            evaluation = out / "evaluate.json"
            if not evaluation.exists():
                parser.error(f"{evaluation} is missing: run the evaluation seeds first")
            candidates = confirmation_candidates(Study.load(evaluation))
    study = compare(train, candidates, seeds, path=out / f"{args.stage}.json", train_options={"budget": epochs})
    text, _ = setting_summary(args.setting, out)
    (out / "summary.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"{args.stage}: {len(study.runs)} runs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
