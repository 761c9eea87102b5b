"""Step-time overhead of the torch Modulator (not a test): ratio with / without it, on CPU.

Two-modality models, concat fusion: a ResNet-style CNN per modality, and a small transformer per
modality. Variants ``plain`` (no modulator), ``grad`` and ``lr`` (PDMP with active gammas), and
``adaptive-aux`` (AdaptivePDMP with auxiliary unimodal losses, grad mode) are measured
*interleaved*: every round times a few steps of each variant in a shuffled order, so drift in machine
load hits all variants alike. The reported ratio is the median over rounds of (variant / plain), for
wall time and for this process's CPU time (less sensitive to other processes on a shared machine).

    python -m benchmarks.torch_overhead --rounds 20 --out torch_overhead.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.models_torch import FusionNet, ResNetEncoder, TransformerEncoder
from pdmp import PDMP, AdaptivePDMP
from pdmp.backends.torch import Modulator

#: ``adaptive-aux``: AdaptivePDMP with auxiliary unimodal losses, the loop of the README (observe the
#: decomposed logits, add their weighted losses; every term computed even when its weight is 0).
VARIANTS = ("plain", "grad", "lr", "adaptive-aux")


def cnn(batch: int) -> tuple[FusionNet, dict[str, torch.Tensor]]:
    """The benchmark's ResNet-style encoders (32-64-128 channels), one per modality, concat fusion."""
    model = FusionNet({"audio": ResNetEncoder(1, 128), "image": ResNetEncoder(3, 128)}, num_classes=10)
    return model, {"audio": torch.randn(batch, 1, 32, 32), "image": torch.randn(batch, 3, 32, 32)}


def transformer(batch: int) -> tuple[FusionNet, dict[str, torch.Tensor]]:
    """The benchmark's ViT/AST-style encoders (width 64, 2 layers), one per modality, concat fusion."""
    encoders = {"audio": TransformerEncoder((1, 40, 48), 64), "image": TransformerEncoder((1, 32, 32), 64)}
    return FusionNet(encoders, num_classes=10), {
        "audio": torch.randn(batch, 1, 40, 48),
        "image": torch.randn(batch, 1, 32, 32),
    }


def make_step(variant: str, template: FusionNet, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    mod = None
    if variant == "adaptive-aux":
        policy: Any = AdaptivePDMP(["audio", "image"], {"audio": 0.9, "image": 0.5}, auxiliary=4.0)
        mod = Modulator(dict(model.encoders.items()), policy, mode="grad", optimizer=optimizer)  # type: ignore[arg-type]
    elif variant != "plain":
        policy = PDMP(["audio", "image"], "audio", gamma_p=10.0, gamma_r=0.5)
        mod = Modulator(dict(model.encoders.items()), policy, mode=variant, optimizer=optimizer)  # type: ignore[arg-type]
    labels = torch.randint(0, 10, (inputs["audio"].shape[0],), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if variant == "adaptive-aux":
            assert mod is not None
            features = model.encode(inputs)
            decomposed = model.per_modality_logits(features, detach=False)
            weights = mod.unimodal_loss_weights
            mod.observe({name: value.detach() for name, value in decomposed.items()}, labels)
            loss = nn.functional.cross_entropy(model.fuse(features), labels)
            loss = loss + sum(weights[m] * nn.functional.cross_entropy(decomposed[m], labels) for m in decomposed)
            loss.backward()
        else:
            nn.functional.cross_entropy(model.fuse(model.encode(inputs)), labels).backward()
        optimizer.step()
        if mod is not None:
            mod.step()

    return step


def interleaved(
    run: Callable[[str, int], tuple[float, float]], variants: Sequence[str], *, rounds: int, steps: int, seed: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time variants side by side: ``run(variant, count)`` takes ``count`` steps and returns (wall, CPU)
    seconds per step. After a 2-step warm-up of each (allocator, kernels, first-step optimizer state),
    ``rounds`` blocks of ``steps`` steps per variant, in an order shuffled per round (seeded), so drifts
    of a noisy machine fall on every variant alike. Returns per-block seconds per step, by variant."""
    for variant in variants:
        run(variant, 2)
    order = list(variants)
    shuffler = random.Random(seed)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        shuffler.shuffle(order)
        for variant in order:
            seconds_wall, seconds_cpu = run(variant, steps)
            wall[variant].append(seconds_wall)
            cpu[variant].append(seconds_cpu)
    return wall, cpu


def measure(
    name: str, build: Callable[[int], Any], *, batch: int, rounds: int, steps: int, seed: int
) -> dict[str, Any]:
    torch.manual_seed(seed)
    template, inputs = build(batch)
    runners = {variant: make_step(variant, template, inputs) for variant in VARIANTS}

    def run(variant: str, count: int) -> tuple[float, float]:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            runners[variant]()
        return (time.perf_counter() - start_wall) / count, (time.process_time() - start_cpu) / count

    wall, cpu = interleaved(run, VARIANTS, rounds=rounds, steps=steps, seed=seed)
    result: dict[str, Any] = {
        "model": name,
        "parameters": sum(p.numel() for p in template.parameters()),
        "parameter_tensors": sum(1 for _ in template.parameters()),
        "batch": batch,
        "step_ms_median": {v: 1e3 * statistics.median(wall[v]) for v in VARIANTS},
    }
    result["hook_ms"] = 1e3 * hook_cost(template)
    result["hook_fraction_of_plain_step"] = result["hook_ms"] / result["step_ms_median"]["plain"]
    for clock, times in (("wall", wall), ("cpu", cpu)):
        result[f"ratio_{clock}"] = {
            v: statistics.median(t / p for t, p in zip(times[v], times["plain"], strict=True)) for v in VARIANTS[1:]
        }
    return result


def hook_cost(template: FusionNet, repeats: int = 30) -> float:
    """Seconds per step spent in grad-mode hooks, timed alone (best of ``repeats``).

    A lower bound on grad mode's overhead that machine load barely disturbs: on a shared machine the
    interleaved ratios above carry a few percent of noise (``lr`` mode does no per-tensor work at all,
    so its ratio shows the noise level).
    """
    model = copy.deepcopy(template)
    mod = Modulator(dict(model.encoders.items()), PDMP(["audio", "image"], "audio"))
    calls = [(name, torch.randn_like(p)) for name, params in mod.params.items() for p in params]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for name, grad in calls:
            mod._hook(name, grad)
        best = min(best, time.perf_counter() - start)
    mod.remove()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("torch_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [
        measure(name, build, batch=args.batch, rounds=args.rounds, steps=args.steps, seed=args.seed)
        for name, build in (("resnet-cnn", cnn), ("transformer", transformer))
    ]
    for r in results:
        ms = ", ".join(f"{v} {t:.1f} ms" for v, t in r["step_ms_median"].items())
        ratios = ", ".join(f"{v} wall x{r['ratio_wall'][v]:.4f} cpu x{r['ratio_cpu'][v]:.4f}" for v in VARIANTS[1:])
        print(f"{r['model']:12s} ({r['parameter_tensors']} tensors, batch {r['batch']}): {ms}; {ratios}")
        hook = f"{r['hook_ms']:.3f} ms/step = {r['hook_fraction_of_plain_step']:.2%} of a plain step"
        print(f"{'':12s} grad-mode hook work alone (without autograd's dispatch to Python): {hook}")
    report = {
        "benchmark": "torch_overhead",
        "target": "grad and lr: ratio <= 1.03; adaptive-aux (the adaptive rule's goal): ratio <= 1.1",
        "torch": torch.__version__,
        "machine": platform.platform(),
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
