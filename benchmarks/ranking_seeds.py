"""Rank each built-in regime over several training seeds: do the seeds agree with the bootstrap?

    python -m benchmarks.ranking_seeds --threads 1

For every AV-digits regime, ``pdmp.backends.torch.rank_unimodal`` trains the benchmark's unimodal
models (the regime's encoders: ResNet-style CNNs, the wide image MLP in the under-optimization
regime) with the benchmark's recipe (SGD, momentum 0.9, weight decay 1e-4, cosine decay) once per
training seed, and combines the per-seed rankings (``pdmp.combine_rankings``): scores are seed means,
``seed_agreement`` is the fraction of seeds that put the dominant modality on top, ``stability`` the
mean bootstrap stability over validation resamples. Prints a table, writes JSON and the rankings to
``--out`` (default ``results/ranking-seeds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pdmp
from benchmarks.protocol import ENCODER_OVERRIDES, environment

REGIMES = ("image_dominant", "audio_dominant", "under_optimization")


def rank_regime(regime: str, *, seeds: tuple[int, ...], epochs: int, subset: float, width: int) -> dict[str, Any]:
    import torch

    from benchmarks.models_torch import UnimodalNet, make_encoder
    from benchmarks.run import load_dataset
    from pdmp.backends.torch import rank_unimodal

    name = f"av_digits:{regime}"
    data = load_dataset(name, 0, None)
    classes = len(data.class_names)
    overrides = ENCODER_OVERRIDES.get(name, {})

    def factory(modality: str) -> Any:
        kind = overrides.get(modality, "cnn")
        shape = data.train.inputs[modality].shape[1:]
        return lambda: UnimodalNet(make_encoder(kind, shape, width), classes)

    def pairs(split: Any) -> dict[str, tuple[Any, Any]]:
        return {m: (split.inputs[m], split.labels) for m in data.modalities}

    steps = epochs * -(-int(len(data.train) * subset) // 64)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pdmp.RankingWarning)
        ranking = rank_unimodal(
            {m: factory(m) for m in data.modalities},
            pairs(data.train),
            pairs(data.val),
            epochs=epochs,
            subset=subset,
            optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4),
            scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
            scheduler_interval="step",
            batch_size=64,
            seeds=seeds,
            n_bootstrap=1000,
            progress=False,
        )
    seconds = time.perf_counter() - started
    return {
        "regime": regime,
        "ranking": ranking.to_dict(),
        "seconds": seconds,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, pdmp.RankingWarning)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=float, default=1.0, help="fraction of the training set")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("results") / "ranking-seeds")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for regime in args.regimes:
        result = rank_regime(regime, seeds=tuple(args.seeds), epochs=args.epochs, subset=args.subset, width=32)
        pdmp.Ranking.from_dict(result["ranking"]).save(args.out / f"ranking_{regime}.json")
        rows.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "ranking"} | {"order": result["ranking"]["order"]}))
    lines = [
        f"Command: `python -m benchmarks.ranking_seeds {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| regime | order | scores (mean over seeds) | per-seed scores | seed agreement | bootstrap stability "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ranking = row["ranking"]
        scores = ", ".join(f"{m} {100 * ranking['scores'][m]:.1f}" for m in ranking["order"])
        per_seed = "; ".join(
            f"{m} " + "/".join(f"{100 * v:.1f}" for v in ranking["seed_scores"][m]) for m in ranking["order"]
        )
        lines.append(
            f"| {row['regime']} | {' > '.join(ranking['order'])} | {scores} | {per_seed} | "
            f"{ranking['seed_agreement']:.2f} | {ranking['stability']:.3f} | {row['seconds']:.0f} |"
        )
    env = environment()
    lines += ["", f"{len(args.seeds)} training seeds, {args.epochs} epochs, subset {args.subset}; {env['cpu']}, "
              f"torch threads {env.get('torch_threads')}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
