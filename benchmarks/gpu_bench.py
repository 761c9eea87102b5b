"""The GPU comparison, one command: joint, PDMP default, uniform scaling and the adaptive rule, on the same
seeds, with width-128 CNN and transformer encoders, from the compact data files.

    # on the GPU machine (torch and torchaudio only; results/gpu-cache carried along, see benchmarks/README.md)
    python3 -m benchmarks.gpu_bench --cache-dir results/gpu-cache --out "$OUT" --work /tmp/pdmp-gpu
    # end to end on CPU with a tiny configuration
    python -m benchmarks.gpu_bench --cache-dir results/gpu-cache --device cpu --epochs 1 --seeds 0 --subset 0.05

For every setting (regime x encoder; AdamW and per-modality learning rates for transformers, SGD and
gradient scaling for CNNs, the benchmark's recipes in ``benchmarks.protocol``):

1. stage 1: one unimodal model per modality with the same encoders and epochs (seed 0), ranked by
   validation accuracy (the adaptive rule's targets come from these accuracies);
2. :func:`pdmp.compare` trains ``joint``, ``pdmp`` (gamma_p 10, gamma_r 0.5, warm-up 1 epoch),
   ``uniform`` (every encoder x10 after the warm-up: is PDMP only a larger learning rate?) and
   ``adaptive`` (:class:`pdmp.AdaptivePDMP` with its defaults, untuned) and the adaptive rule with
   auxiliary losses as :mod:`benchmarks.adaptive_rules` chose it (``adaptive_aux_only``) through
   ``benchmarks.gamma_search.make_train``, seed by seed, and reports paired differences to joint
   training with paired Student-t intervals.

Seeds go round by round over all settings (seed 0 of every setting, then seed 1, ...), and
``--budget-minutes`` stops before a round that would not fit: a run cut short by the device machine's
limit still leaves complete, paired seeds. ``summary.md`` and ``results.json`` in ``--out`` are
rewritten after every finished (setting, seed); the resumable per-setting study files live in
``--work``. Nothing here needs TensorFlow, eSpeak NG, tqdm or matplotlib, nor an installed pdmp.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: The regimes the GPU command needs: two files fit beside the working tree on a device machine (64 MiB
#: in all; three do not), and these two hold the open questions (the transformer's gain under AdamW;
#: PDMP's own under-optimization case). image_dominant runs with --regimes where its file is carried.
GPU_REGIMES = ("audio_dominant", "under_optimization")
ENCODERS = {"cnn": "sgd", "transformer": "adamw"}
#: (regime, encoder) by default: CNNs on both regimes, the transformer where it gained (issue 13's list
#: minus the regime that does not fit); sized to about 5.5 minutes on one H200 (benchmarks/README.md).
DEFAULT_SETTINGS = (("audio_dominant", "cnn"), ("under_optimization", "cnn"), ("audio_dominant", "transformer"))
CANDIDATES = ("joint", "pdmp", "uniform", "adaptive")


class _SilentBar:
    """Stands in for ``tqdm.auto.tqdm`` where tqdm is not installed: iterates, shows nothing."""

    def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Any:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # update, close, set_description, set_postfix, refresh, ...
        return lambda *args, **kwargs: None


def ensure_tqdm() -> None:
    """The torch adapter imports tqdm at import time (pdmp[torch] installs it); a bare machine may lack it,
    and this benchmark shows no bars: a silent stand-in then."""
    if importlib.util.find_spec("tqdm") is not None:
        return
    auto = types.ModuleType("tqdm.auto")
    auto.__spec__ = importlib.machinery.ModuleSpec("tqdm.auto", None)
    auto.tqdm = _SilentBar  # type: ignore[attr-defined]
    package = types.ModuleType("tqdm")
    # torch._dynamo looks tqdm up with find_spec, which needs a spec on a module already imported.
    package.__spec__ = importlib.machinery.ModuleSpec("tqdm", None, is_package=True)
    package.__path__ = []
    package.tqdm = _SilentBar  # type: ignore[attr-defined]
    package.auto = auto  # type: ignore[attr-defined]
    sys.modules.update({"tqdm": package, "tqdm.auto": auto})


def ensure_pdmp_backends() -> None:
    """Map ``pdmp.backends`` onto ``backends/`` when pdmp runs from a checkout without being installed.

    pyproject.toml installs ``backends/`` as ``pdmp.backends``; a bare GPU machine runs the checkout
    as it is (nothing can be installed there), where ``import pdmp.backends.torch`` would fail.
    """
    import pdmp

    if importlib.util.find_spec("pdmp.backends") is not None:
        return
    package = types.ModuleType("pdmp.backends")
    package.__path__ = [str(ROOT / "backends")]
    package.__file__ = str(ROOT / "backends" / "__init__.py")
    sys.modules["pdmp.backends"] = package
    exec(compile((ROOT / "backends" / "__init__.py").read_text(), package.__file__, "exec"), package.__dict__)
    pdmp.backends = package  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Setting:
    regime: str
    encoder: str

    @property
    def optimizer(self) -> str:
        return ENCODERS[self.encoder]

    @property
    def dataset(self) -> str:
        return f"av_digits:{self.regime}"

    @property
    def label(self) -> str:
        return f"{self.regime}_{self.encoder}_{self.optimizer}"


def load_data(regime: str, cache_dir: Path | None, subset: float | None) -> Any:
    """The regime from its compact file in ``cache_dir`` (verified), else from the dataset cache."""
    if cache_dir is not None:
        from pdmp.datasets._compact import load_compact_av_digits

        data: Any = load_compact_av_digits(regime, cache_dir)
    else:
        from pdmp.datasets import load_av_digits

        data = load_av_digits(regime, progress=False)
    if not subset:
        return data
    # As benchmarks.run.load_dataset: a seeded random fraction of each split (quick checks only).
    rng = np.random.default_rng(0)
    return replace(
        data,
        **{
            name: split.subset(np.sort(rng.permutation(len(split))[: max(20, int(len(split) * subset))]))
            for name, split in ((name, data.split(name)) for name in ("train", "val", "test"))
        },
    )


def rank(setting: Setting, data: Any, epochs: int, width: int, device: str) -> tuple[Any, float]:
    """Stage 1 with the comparison's own encoders, epochs and recipe: validation accuracy, seed 0."""
    import pdmp
    from benchmarks import train_torch
    from benchmarks.gamma_search import LR
    from benchmarks.protocol import ADAMW, ENCODER_OVERRIDES, TrainConfig

    base: dict[str, Any] = ADAMW if setting.optimizer == "adamw" else {"lr": LR}
    config = TrainConfig(
        epochs=epochs,
        optimizer=setting.optimizer,
        **base,
        encoder=setting.encoder,
        width=width,
        device=device,
        batch_size=64,
        encoder_overrides=ENCODER_OVERRIDES.get(setting.dataset, {}),
    )
    started = time.perf_counter()
    predicted = {
        name: train_torch.train_run(data, (name,), config, 0)["val_predicted"] for name in tuple(data.modalities)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pdmp.RankingWarning)  # a near-tie shows in the scores and the stability
        ranking = pdmp.rank_modalities(
            predicted,
            data.val.labels,
            n_bootstrap=1000,
            seed=0,
            budget={"epochs": epochs, "subset": 1.0, "encoder": setting.encoder, "width": width, "seed": 0},
        )
    return ranking, time.perf_counter() - started


def candidates(ranking: Any) -> list[Any]:
    import pdmp
    from benchmarks.adaptive_rules import chosen_rule
    from pdmp.compare import Candidate, default_candidates

    fixed = [c for c in default_candidates(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1) if c.name in CANDIDATES]
    return [*fixed, Candidate("adaptive", pdmp.AdaptivePDMP.from_ranking(ranking)), chosen_rule(ranking)]


def _environment(device: str) -> dict[str, Any]:
    from benchmarks.protocol import environment

    info = environment()
    info["device"] = device
    return info


def write_report(out: Path, state: dict[str, Any]) -> str:
    """``summary.md`` and ``results.json`` from the studies finished so far (complete seeds only)."""
    from pdmp.compare import Study

    lines = [
        "# GPU comparison: joint, PDMP default, uniform scaling, adaptive rule",
        "",
        f"Command: `{state['command']}`.",
        f"Device {state['environment']['device']}"
        f"{' (' + state['environment']['gpu'] + ')' if state['environment'].get('gpu') else ''}, "
        f"torch {state['environment'].get('torch', '?')}; {state['epochs']} epochs, encoder width {state['width']}, "
        "batch 64, cosine decay; CNN: SGD lr 0.05 (momentum 0.9, wd 1e-4), gradient scaling; transformer: AdamW "
        "lr 1e-3 (wd 1e-2), per-modality learning rates. "
        f"Data: {state['data']}.",
        "",
    ]
    for entry in state["settings"]:
        lines += [f"## {entry['label']}", ""]
        ranking = entry.get("ranking")
        if ranking is None:
            lines += ["Not started (time budget).", ""]
            continue
        scores = ", ".join(f"{name} {100 * value:.1f}" for name, value in ranking["scores"].items())
        lines += [
            f"Stage 1 (validation accuracy, seed 0, {entry['ranking_seconds']:.0f} s): {' > '.join(ranking['order'])}"
            f" ({scores}; top stays on top in {100 * ranking.get('stability', float('nan')):.0f}% of resamples).",
            "",
        ]
        study_path = Path(entry["study_path"])
        if not study_path.exists():
            lines += ["No finished seed yet.", ""]
            continue
        stored = Study.load(study_path)
        complete = [s for s in stored.seeds if all((c.name, s) in stored.runs for c in stored.candidates)]
        if not complete:
            lines += ["No seed finished for every candidate yet.", ""]
            continue
        study = Study(stored.candidates, complete, stored.reference)
        study.runs = {key: run for key, run in stored.runs.items() if key[1] in complete}
        entry["seeds_complete"] = complete
        entry["study"] = stored.to_dict()
        entry["rows"] = {metric: study.rows(metric) for metric in ("test_acc", "test_acc_at_best_val")}
        lines += [
            "Final-epoch test accuracy, paired against joint training:",
            "",
            study.to_markdown("test_acc"),
            "",
            "Test accuracy at the best-validation epoch, paired against joint training:",
            "",
            study.to_markdown("test_acc_at_best_val"),
            "",
        ]
    stop = state.get("stopped")
    lines += [
        f"Wall time {state['wall_time_s'] / 60:.1f} min (budget {state['budget_minutes']} min)"
        + (f"; {stop}" if stop else "")
        + f". Environment: {json.dumps(state['environment'], default=str)}.",
    ]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "results.json").write_text(json.dumps(state, indent=1, default=str))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ["PDMP_GPU_CACHE"]) if os.environ.get("PDMP_GPU_CACHE") else None,
        help="folder of compact data files (python -m benchmarks.gpu_cache export; default $PDMP_GPU_CACHE); "
        "without it the regimes load from the dataset cache, which needs eSpeak NG to build",
    )
    parser.add_argument("--out", type=Path, default=Path("results") / "gpu", help="summary.md and results.json")
    parser.add_argument("--work", type=Path, default=None, help="resumable study files (default: <out>/work)")
    parser.add_argument(
        "--regimes", nargs="+", default=None, help="with --encoders: every regime x encoder (default: DEFAULT_SETTINGS)"
    )
    parser.add_argument("--encoders", nargs="+", choices=sorted(ENCODERS), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--subset", type=float, default=None, help="fraction of each split (quick checks only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=9.0,
        help="start no seed round that would end after this (the device machine stops a command at 10 min)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ensure_tqdm()
    ensure_pdmp_backends()
    import torch

    import pdmp
    from benchmarks.gamma_search import make_train
    from pdmp.compare import compare

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {args.device} but torch {torch.__version__} sees no GPU; pass --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.regimes is None and args.encoders is None:
        settings = [Setting(regime, encoder) for regime, encoder in DEFAULT_SETTINGS]
    else:
        settings = [
            Setting(regime, encoder)
            for encoder in args.encoders or list(ENCODERS)
            for regime in args.regimes or list(GPU_REGIMES)
        ]
    unknown = sorted({s.regime for s in settings} - {"image_dominant", "audio_dominant", "under_optimization"})
    if unknown:
        print(f"error: unknown regime(s) {unknown}", file=sys.stderr)
        return 2
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    # Every file is loaded (and verified) before any training: a missing or altered one stops the run at once.
    data = {
        regime: load_data(regime, args.cache_dir, args.subset) for regime in dict.fromkeys(s.regime for s in settings)
    }
    sizes = {regime: (len(d.train), len(d.val), len(d.test)) for regime, d in data.items()}
    state: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.gpu_bench", *(argv if argv is not None else sys.argv[1:])]),
        "environment": _environment(args.device),
        "epochs": args.epochs,
        "width": args.width,
        "seeds": args.seeds,
        "budget_minutes": args.budget_minutes,
        "data": (f"compact files in {args.cache_dir}" if args.cache_dir else "the dataset cache")
        + f", train/val/test sizes {sizes}"
        + (f" (subset {args.subset})" if args.subset else ""),
        "settings": [
            {"label": s.label, "regime": s.regime, "encoder": s.encoder, "optimizer": s.optimizer} for s in settings
        ],
        "wall_time_s": 0.0,
        "stopped": None,
    }
    budget_s = 60 * args.budget_minutes
    torch.zeros(1, device=args.device)  # start CUDA here, not inside the first timed run
    trains, run_seconds = {}, {}
    # Work files are keyed by what changes the runs, so a rerun resumes only its own configuration.
    key = f"e{args.epochs}_w{args.width}" + (f"_sub{args.subset}" if args.subset else "")
    for setting, entry in zip(settings, state["settings"], strict=True):
        ranking_file = work / f"ranking_{setting.label}_{key}.json"
        if ranking_file.exists():  # resuming: the adaptive candidate's targets must not change
            ranking, seconds = pdmp.Ranking.load(ranking_file), 0.0
        else:
            ranking, seconds = rank(setting, data[setting.regime], args.epochs, args.width, args.device)
            ranking.save(ranking_file)
        entry.update(
            ranking=ranking.to_dict(), ranking_seconds=seconds, study_path=str(work / f"{setting.label}_{key}.json")
        )
        trains[setting] = make_train(
            setting.dataset,
            data[setting.regime],
            encoder=setting.encoder,
            optimizer=setting.optimizer,
            width=args.width,
            device=args.device,
        )
        # A unimodal run costs about half a multimodal one: the first seed's estimate until it is measured.
        run_seconds[setting] = seconds
        print(f"ranked {setting.label}: {' > '.join(ranking.order)} {ranking.scores} ({seconds:.1f} s)", flush=True)
    for seed in args.seeds:
        for setting, entry in zip(settings, state["settings"], strict=True):
            elapsed = time.perf_counter() - started
            expected = (len(CANDIDATES) + 1) * run_seconds[setting]  # + the rule with auxiliary losses
            # The first round always runs (without it there is nothing to report); later ones only if they fit.
            if seed != args.seeds[0] and elapsed + expected > budget_s:
                state["stopped"] = (
                    f"stopped by the time budget before seed {seed} of {setting.label} "
                    f"(elapsed {elapsed:.0f} s, expected {expected:.0f} s more)"
                )
                break
            ranking = pdmp.Ranking.from_dict(entry["ranking"])
            unit_start = time.perf_counter()
            compare(
                trains[setting],
                candidates(ranking),
                [seed],
                path=entry["study_path"],
                train_options={"budget": args.epochs},
            )
            run_seconds[setting] = (time.perf_counter() - unit_start) / len(CANDIDATES)
            state["wall_time_s"] = time.perf_counter() - started
            write_report(args.out, state)
        if state["stopped"]:
            break
    state["wall_time_s"] = time.perf_counter() - started
    print(write_report(args.out, state))
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
