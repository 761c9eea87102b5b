"""The benchmark: rank modalities, train every method on every setting, write JSON, table and plots.

    python -m benchmarks.run --preset main      # the README's main job (nox -s bench)
    python -m benchmarks.run --preset full      # nox -s bench-full
    python -m benchmarks.run --preset gpu       # width 128, 30 epochs, tuning, controls on CUDA (hours;
                                                # nox -s bench-gpu runs the 10-minute benchmarks.gpu_bench)
    python -m benchmarks.run --preset smoke     # seconds; used by the tests

Protocol (identical for every method of a setting): the same seeds, hence the same initial weights and
the same data order; SGD with momentum 0.9, weight decay 1e-4 and cosine decay (AdamW for transformer
settings); validation metrics every epoch; hyperparameters chosen on validation only; the test split is
read only after training, for the final and the best-validation weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.protocol import (
    ADAMW,
    ENCODER_OVERRIDES,
    Method,
    TrainConfig,
    environment,
    extra_controls,
    main_methods,
    modulation_mode,
    tuning_grids,
)
from benchmarks.report import load_runs, plot_runs, summary_table
from pdmp import Ranking, RankingWarning, rank_modalities


@dataclass(frozen=True)
class Setting:
    dataset: str  # "av_digits:<regime>" or "mfeat"
    encoder: str = "cnn"
    fusion: str = "concat"
    backend: str = "torch"
    optimizer: str = "sgd"  # "adamw": transformers do not train with SGD at the CNNs' learning rate

    @property
    def label(self) -> str:
        parts = [self.dataset, self.backend, self.encoder, self.fusion]
        return "_".join(parts + ([self.optimizer] if self.optimizer != "sgd" else []))


@dataclass(frozen=True)
class Preset:
    settings: tuple[Setting, ...]
    seeds: tuple[int, ...]
    epochs: int
    width: int = 32
    lr: float = 0.05  # SGD's; AdamW settings use benchmarks.protocol.ADAMW
    batch_size: int = 64
    tune: bool = False  # choose PDMP / OGM-GE / joint-lr settings on validation of the tuning seed
    #: Tuning candidates train on this seed only; it is never an evaluation seed (no optimistic bias).
    tuning_seed: int = 100
    controls: bool = False  # inverse PDMP
    cheap_ranking: bool = False
    device: str = "cpu"
    subset: float | None = None  # fraction of each split (smoke tests only)
    extra: dict[str, Any] = field(default_factory=dict)


AV = ("av_digits:image_dominant", "av_digits:audio_dominant", "av_digits:under_optimization")


def _full_settings() -> tuple[Setting, ...]:
    settings = [Setting(d, "cnn") for d in (*AV, "mfeat")]
    settings += [Setting(d, "transformer", optimizer="adamw") for d in (*AV, "mfeat")]
    settings += [Setting(d, "cnn", f, "torch") for d in AV[:2] for f in ("sum", "film", "gated")]
    settings += [Setting(d, "cnn", "concat", "keras") for d in AV]
    return tuple(settings)


PRESETS: dict[str, Preset] = {
    "main": Preset(settings=tuple(Setting(d) for d in AV), seeds=(0, 1, 2), epochs=10, cheap_ranking=True),
    # The controls with tuning on validation, on the two regimes where the direction matters most.
    "controls": Preset(settings=(Setting(AV[2]), Setting(AV[1])), seeds=(0, 1, 2), epochs=10, tune=True, controls=True),
    "full": Preset(
        settings=_full_settings(), seeds=(0, 1, 2, 3, 4), epochs=12, tune=True, controls=True, cheap_ranking=True
    ),
    # What of bench-full fits a 2-core session, in parts that can run side by side (--threads 1), on the
    # audio-dominant regime (where pilots saw the largest effects): the other encoder, the three-view
    # set, the other backend, and a non-concat fusion.
    "extended-a": Preset(settings=(Setting(AV[1], "transformer"), Setting("mfeat")), seeds=(0, 1, 2), epochs=10),
    "extended-b": Preset(settings=(Setting(AV[1], backend="keras"),), seeds=(0, 1, 2), epochs=10),
    "extended-c": Preset(settings=(Setting(AV[1], "cnn", "sum"),), seeds=(0, 1, 2), epochs=10),
    # Transformers with the optimiser they need (extended-a's SGD left them at chance), and the remaining
    # fusions.
    "transformer": Preset(
        settings=tuple(Setting(d, "transformer", optimizer="adamw") for d in AV), seeds=(0, 1, 2), epochs=10
    ),
    # The equal-tuning-budget and inverse controls where the transformer run found PDMP's largest gain.
    "transformer-controls": Preset(
        settings=(Setting(AV[1], "transformer", optimizer="adamw"),),
        seeds=(0, 1, 2),
        epochs=10,
        tune=True,
        controls=True,
    ),
    "fusions": Preset(settings=tuple(Setting(AV[1], "cnn", f) for f in ("film", "gated")), seeds=(0, 1, 2), epochs=10),
    "gpu": Preset(
        settings=tuple(Setting(d, "cnn") for d in AV) + tuple(Setting(d, "transformer", optimizer="adamw") for d in AV),
        seeds=(0, 1, 2),
        epochs=30,
        width=128,
        tune=True,
        controls=True,
        device="cuda",
    ),
    "smoke": Preset(
        settings=tuple(
            Setting("av_digits:image_dominant", encoder, backend=backend, optimizer=optimizer)
            for encoder, optimizer in (("cnn", "sgd"), ("transformer", "adamw"))
            for backend in ("torch", "keras")
        ),
        seeds=(0, 1),
        epochs=2,
        width=8,
        subset=0.08,
        cheap_ranking=True,
    ),
}


def load_dataset(name: str, seed: int, subset: float | None) -> Any:
    from pdmp import datasets

    if name == "mfeat":
        data = datasets.load_mfeat(seed=seed)
    else:
        _, regime = name.split(":")
        data = datasets.load_av_digits(regime, seed=seed)
    if not subset:
        return data
    # Smoke runs: a seeded random fraction of each split (splits are stored grouped by class).
    rng = np.random.default_rng(seed)
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    return replace(
        data,
        **{
            name: split.subset(np.sort(rng.permutation(len(split))[: max(20, int(len(split) * subset))]))
            for name, split in splits.items()
        },
    )


class Runner:
    """Trains runs for one backend, writing one JSON per run into ``out/runs``."""

    def __init__(self, preset: Preset, out: Path, progress: bool, ranking_dir: Path | None = None) -> None:
        self.preset, self.out, self.progress, self.ranking_dir = preset, out, progress, ranking_dir
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def train(
        self,
        setting: Setting,
        data: Any,
        modalities: tuple[str, ...],
        seed: int,
        method: Method | None,
        ranking: Any,
        bar: Any,
    ) -> dict[str, Any]:
        if setting.backend == "torch":
            from benchmarks import train_torch as backend
        else:
            from benchmarks import train_keras as backend  # type: ignore[no-redef]
        base = ADAMW if setting.optimizer == "adamw" else {"lr": self.preset.lr}  # SGD: TrainConfig's weight decay
        config = TrainConfig(
            epochs=self.preset.epochs,
            optimizer=setting.optimizer,
            **base,
            batch_size=self.preset.batch_size,
            encoder=setting.encoder,
            fusion=setting.fusion,
            width=self.preset.width,
            device=self.preset.device,
            encoder_overrides=ENCODER_OVERRIDES.get(setting.dataset, {}),
        )
        policy = method.policy(ranking, config.epochs) if method is not None else None
        result = backend.train_run(
            data, modalities, config, seed, policy=policy, lr_scale=method.lr_scale if method else 1.0, progress=bar
        )
        name = method.name if method else f"unimodal:{modalities[0]}"
        record = {
            "dataset": setting.dataset,
            "backend": setting.backend,
            "encoder": setting.encoder,
            "fusion": setting.fusion,
            "optimizer": setting.optimizer,
            "seed": seed,
            "modalities": list(modalities),
            "method": method.to_dict() if method else {"name": name, "kind": "unimodal"},
            "policy": policy.get_config() if policy else None,
            "modulation_mode": modulation_mode(config, policy) if policy and len(modalities) > 1 else None,
            "config": config.to_dict(),
            "ranking": ranking.to_dict() if ranking is not None else None,
            "data": getattr(data, "metadata", {}),
            "environment": environment(),
            **{k: v for k, v in result.items() if k != "val_predicted"},
        }
        path = run_path(self.out, setting, name, seed)
        path.write_text(json.dumps(record, indent=1, default=_jsonable))
        record["val_predicted"] = result["val_predicted"]
        return record


def run_path(out: Path, setting: Setting, method: str, seed: int) -> Path:
    name = f"{setting.label}_{method}_s{seed}"
    return out / "runs" / f"{name.replace(':', '-').replace('/', '-')}.json"


def ranking_path(out: Path, setting: Setting) -> Path:
    """One ranking per dataset, backend, encoder and optimizer (fusion does not enter unimodal training)."""
    parts = [setting.dataset, setting.encoder]
    parts += [setting.backend] if setting.backend != "torch" else []
    parts += [setting.optimizer] if setting.optimizer != "sgd" else []
    return out / f"ranking_{'_'.join(parts).replace(':', '-')}.json"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_setting(runner: Runner, setting: Setting, bar: Any) -> None:
    preset = runner.preset
    data = load_dataset(setting.dataset, 0, preset.subset)
    modalities = tuple(data.modalities)
    # Stage 1: unimodal models (also the unimodal baseline rows); rank on validation of the first seed.
    unimodal: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in preset.seeds:
        for name in modalities:
            bar.set_description(f"{setting.dataset} {setting.encoder}/{setting.fusion} unimodal {name} s{seed}")
            unimodal.setdefault(seed, {})[name] = runner.train(setting, data, (name,), seed, None, None, bar)
            bar.update()
    if runner.ranking_dir is not None:  # rank once, train more seeds later with the same ranking
        ranking = Ranking.load(ranking_path(runner.ranking_dir, setting))
    else:
        first = unimodal[preset.seeds[0]]
        with warnings.catch_warnings():
            warnings.simplefilter("always", RankingWarning)
            ranking = rank_modalities(
                {name: run["val_predicted"] for name, run in first.items()},
                data.val.labels,
                n_bootstrap=1000,
                seed=0,
                budget={"epochs": preset.epochs, "subset": 1.0, "encoder": setting.encoder, "seed": preset.seeds[0]},
            )
    ranking.save(ranking_path(runner.out, setting))
    # Stage 2: multimodal methods; tuned ones are chosen on validation of the tuning seed, which is not
    # an evaluation seed.
    methods = main_methods() + (extra_controls() if preset.controls else [])
    if preset.tune:
        for family, candidates in tuning_grids().items():
            scores = []
            for candidate in candidates:
                bar.set_description(f"{setting.dataset} tune {candidate.name}")
                run = runner.train(setting, data, modalities, preset.tuning_seed, candidate, ranking, bar)
                scores.append((run["best_val"]["val"]["acc"], candidate))
                bar.update()
            best = max(scores, key=lambda pair: pair[0])[1]
            methods.append(replace(best, name=f"{family}_tuned"))
    for seed in preset.seeds:
        for method in methods:
            bar.set_description(f"{setting.dataset} {setting.encoder}/{setting.fusion} {method.name} s{seed}")
            runner.train(setting, data, modalities, seed, method, ranking, bar)
            bar.update()


def cheap_ranking(preset: Preset, out: Path, progress: bool) -> dict[str, Any]:
    """Agreement of rankings from subsets / short budgets with the benchmark's own ranking (stage 1: the
    full training set and epoch budget, first seed), and what each costs.

    Runs after the settings, whose CNN rankings and unimodal run files it reads from ``out``.
    """
    from benchmarks.train_torch import cheap_rank

    results = {}
    settings = [s for s in preset.settings if s.dataset in AV[:2] and (s.backend, s.encoder) == ("torch", "cnn")]
    for setting in dict.fromkeys(replace(s, fusion="concat") for s in settings):
        dataset = setting.dataset
        full = Ranking.load(ranking_path(out, setting))
        stage1_seconds = sum(
            json.loads(run_path(out, setting, f"unimodal:{name}", preset.seeds[0]).read_text())["wall_time_s"]
            for name in full.order
        )
        rows = [
            {
                "subset": 1.0,
                "epochs": preset.epochs,
                "order": list(full.order),
                "scores": full.scores,
                "agrees_with_full": True,
                "seconds": stage1_seconds,
                "source": "stage 1: the benchmark's ranking",
            }
        ]
        data = load_dataset(dataset, 0, preset.subset)
        for fraction, epochs in (
            (1.0, 2),
            (0.25, 2),
            (0.1, 2),
            (0.25, preset.epochs),
            (0.1, preset.epochs),
        ):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RankingWarning)  # near-ties show in the table
                ranking = cheap_rank(
                    data,
                    fraction=fraction,
                    epochs=epochs,
                    width=preset.width,
                    lr=preset.lr,
                    batch_size=preset.batch_size,
                    progress=progress,
                )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "subset": fraction,
                    "epochs": epochs,
                    "order": list(ranking.order),
                    "scores": ranking.scores,
                    "agrees_with_full": ranking.order == full.order,
                    "seconds": seconds,
                    "source": "rank_unimodal (adapter)",
                }
            )
        results[dataset] = rows
    (out / "cheap_ranking.json").write_text(json.dumps(results, indent=1))
    return results


def cheap_ranking_table(results: dict[str, Any]) -> str:
    lines = [
        "| dataset | subset | epochs | order | scores (val acc) | agrees with full | seconds | trained by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, rows in results.items():
        for row in rows:
            scores = ", ".join(f"{k} {v * 100:.1f}" for k, v in row["scores"].items())
            lines.append(
                f"| {dataset} | {row['subset']} | {row['epochs']} | {' > '.join(row['order'])} | {scores} |"
                f" {'yes' if row['agrees_with_full'] else '**no**'} | {row['seconds']:.1f} |"
                f" {row.get('source', 'rank_unimodal (adapter)')} |"
            )
    return "\n".join(lines)


class _NoBar:
    """Stands in for tqdm where it is not installed (a bare GPU machine): prints one line per run."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.description = total, 0, ""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_description(self, text: str) -> None:
        self.description = text

    def set_postfix(self, **values: object) -> None:
        return None

    def update(self) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {self.description}", flush=True)


def _progress_bar(total: int, disabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar(total)
    return tqdm(total=total, disable=disabled, unit="run", file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="main")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/<preset>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--only", default=None, help="run only settings whose dataset contains this text")
    parser.add_argument("--device", default=None, help="override the device (cpu, cuda)")
    parser.add_argument("--subset", type=float, default=None, help="use this fraction of each split (quick checks)")
    parser.add_argument("--threads", type=int, default=None, help="torch / TensorFlow CPU threads (default: all cores)")
    parser.add_argument(
        "--ranking-dir",
        type=Path,
        default=None,
        help="reuse the ranking files of an earlier run in this folder instead of ranking anew (e.g. more seeds)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md and plots from --out's runs")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    overrides: dict[str, Any] = {}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.device:
        overrides["device"] = args.device
    if args.subset:
        overrides["subset"] = args.subset
    if args.only:
        overrides["settings"] = tuple(s for s in preset.settings if args.only in s.dataset)
    preset = replace(preset, **overrides)
    out = args.out or Path("results") / args.preset
    out.mkdir(parents=True, exist_ok=True)
    if preset.device == "cpu":
        import torch

        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2)))
    if args.threads and any(s.backend == "keras" for s in preset.settings):
        from pdmp.backends._coexistence import load_triton_before_tensorflow

        load_triton_before_tensorflow()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if preset.tune and preset.tuning_seed in preset.seeds:  # refused before any training, not after stage 1
        raise ValueError(
            f"tuning seed {preset.tuning_seed} is also an evaluation seed {list(preset.seeds)}; "
            "tune on a seed that is not evaluated"
        )
    if args.ranking_dir is not None:  # a missing or corrupt ranking file stops the run before any training
        for setting in preset.settings:
            Ranking.load(ranking_path(args.ranking_dir, setting))
    runner = Runner(preset, out, progress=not args.no_progress, ranking_dir=args.ranking_dir)
    per_setting = len(preset.seeds) * (
        2 + len(main_methods()) + (len(extra_controls()) if preset.controls else 0) + (1 if preset.tune else 0) * 3
    ) + (12 if preset.tune else 0)
    start = time.perf_counter()
    if not args.report_only:
        with _progress_bar(per_setting * len(preset.settings), disabled=args.no_progress) as bar:
            for setting in preset.settings:
                run_setting(runner, setting, bar)
        cheap = cheap_ranking(preset, out, not args.no_progress) if preset.cheap_ranking else None
        elapsed = f"{(time.perf_counter() - start) / 60:.1f} min"
        (out / "wall_time.txt").write_text(elapsed)
    else:  # rebuild the table and plots from the run files of an earlier run
        cheap_file = out / "cheap_ranking.json"
        cheap = json.loads(cheap_file.read_text()) if cheap_file.exists() else None
        elapsed = (out / "wall_time.txt").read_text().strip() if (out / "wall_time.txt").exists() else "not recorded"
    optimizers = [f"SGD lr {preset.lr} (momentum 0.9, wd 1e-4)"]
    if any(s.optimizer == "adamw" for s in preset.settings):
        optimizers.append(f"AdamW lr {ADAMW['lr']} (wd {ADAMW['weight_decay']}) for the `adamw` settings")
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    header = (
        f"Command: `{command}`; seeds {list(preset.seeds)}, {preset.epochs} epochs, "
        f"{' / '.join(optimizers)}, cosine decay, batch {preset.batch_size}, encoder width {preset.width}."
    )
    previous = out / "summary.md"
    if args.report_only and previous.exists():  # keep the command that trained the runs
        trained_by = [line for line in previous.read_text().splitlines() if line.startswith("Command:")]
        if trained_by:
            header = f"{trained_by[0]}\n\nTables rebuilt from the run files with `{command}`."
    sections = [f"# Benchmark results: preset `{args.preset}`", "", header, "", summary_table(load_runs(out))]
    if cheap is not None:
        sections += ["## Cheap ranking", "", cheap_ranking_table(cheap)]
    sections += ["", f"Total wall time: {elapsed} on {environment()['cpu']} ({os.cpu_count()} cores)."]
    text = "\n".join(sections) + "\n"
    (out / "summary.md").write_text(text)
    try:
        plots = plot_runs(load_runs(out), out)
    except ImportError as error:  # e.g. a GPU machine without matplotlib: the JSON and table still stand
        print(f"plots skipped ({error}); install matplotlib to get them")
        plots = []
    print(text)
    print(f"wrote {out / 'summary.md'}, {len(plots)} plots and {len(list((out / 'runs').glob('*.json')))} run files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
