"""Is a benchmark run a function of (code, configuration, seed, environment)? A run's fingerprint.

    python -m benchmarks.reproduce --method pdmp --seed 1 --threads 1
    python -m benchmarks.reproduce --method joint --subset 1.0 --epochs 10 --threads 2   # a full run

prints one run's per-epoch training loss, validation metrics and coefficients, its final and
best-validation test metrics and the environment (thread counts, CPU kernel level, versions) as JSON.
Two calls with the same arguments on the same machine print the same numbers, bit for bit
(``tests/test_bench_reproducible.py`` checks it, in one process and across processes with other hash
seeds). What still changes the numbers is the environment, recorded with every run: the torch thread
count (a convolution's or matrix product's sum is split across threads, so 1 and 2 threads round
differently; the first epoch's loss already differs in the 5th digit and ten epochs of SGD turn that
into accuracies several points apart), the CPU's kernel level (``torch_cpu_capability``: AVX2 or
AVX-512 kernels sum in other orders) and the library versions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pdmp import Ranking

#: The audio-dominant regime's ranking as the main benchmark measured it (audio 0.8144, image 0.3728):
#: only its order reaches the policies, so the fingerprint needs no ranking file.
RANKING = Ranking(order=("audio", "image"), scores={"audio": 0.8144, "image": 0.3728})
METHODS = ("joint", "pdmp", "ogm_ge", "symmetric")


def fingerprint(
    *,
    method: str = "pdmp",
    seed: int = 1,
    dataset: str = "av_digits:audio_dominant",
    subset: float | None = 0.08,
    epochs: int = 2,
    encoder: str = "cnn",
    width: int = 8,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train one run of the main benchmark's protocol (``train_torch.train_run``) and return its numbers.

    ``subset``: the fraction of each split the smoke preset uses (``None`` or 1.0: all of it; the data
    slice depends only on the data seed 0). ``threads``: torch's intra-op thread count for the run (the
    previous count is restored afterwards); ``None`` keeps the current one. Wall times are left out.
    """
    import torch

    from benchmarks import train_torch
    from benchmarks.protocol import ENCODER_OVERRIDES, TrainConfig, environment, main_methods
    from benchmarks.run import load_dataset

    methods = {m.name: m for m in main_methods()}
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(methods)}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        data = load_dataset(dataset, 0, None if subset in (None, 1.0) else subset)
        config = TrainConfig(
            epochs=epochs,
            lr=0.05,
            encoder=encoder,
            width=width,
            encoder_overrides=ENCODER_OVERRIDES.get(dataset, {}),
        )
        policy = methods[method].policy(RANKING, epochs)
        result = train_torch.train_run(data, tuple(data.modalities), config, seed, policy=policy)
        env = environment()
    finally:
        torch.set_num_threads(previous)
    history = [{key: value for key, value in epoch.items() if key != "elapsed_s"} for epoch in result["history"]]
    return {
        "method": method,
        "seed": seed,
        "dataset": dataset,
        "subset": subset,
        "config": config.to_dict(),
        "history": history,
        "final": result["final"],
        "best_val": result["best_val"],
        "environment": env,
    }


def numbers(run: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint that must be identical between two runs in one environment."""
    return {key: run[key] for key in ("history", "final", "best_val")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="pdmp")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dataset", default="av_digits:audio_dominant")
    parser.add_argument("--subset", type=float, default=0.08, help="fraction of each split (1.0: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encoder", default="cnn")
    parser.add_argument("--width", type=int, default=8, help="encoder width (the main benchmark uses 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.subset is not None and not (0 < args.subset <= 1 and math.isfinite(args.subset)):
        parser.error(f"--subset must be a fraction in (0, 1], got {args.subset}")
    run = fingerprint(
        method=args.method,
        seed=args.seed,
        dataset=args.dataset,
        subset=args.subset,
        epochs=args.epochs,
        encoder=args.encoder,
        width=args.width,
        threads=args.threads,
    )
    json.dump(run, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
