"""Step-time overhead of the torch Modulator on a many-tensor model (not a test), with an interval.

``grad`` mode's hook path costs one Python call per parameter tensor per backward pass, so its
overhead grows with the number of tensors and shows most on a small, fast step. This measures it on
two ViT-style encoders (``--depth`` pre-norm layers each, 12 tensors per layer) plus a concat head:
with the default depth 6 that is 156 parameter tensors, 154 of them modulated.

Variants, all training one model with one optimizer (SGD with momentum, one parameter group per
modality and one for the head), fed the same batch; a variant's Modulator is attached for its timed
steps and removed after them (outside the timing), so that no variant gains or loses from where a
copy of the weights lies in memory (a few percent between two copies, measured with ``plain-b``):

* ``plain``: no modulator.
* ``plain-b``: ``plain`` again, timed as a separate variant: an A/A control whose "ratio" shows the
  noise level, below which no overhead should be read.
* ``grad-hooks``: PDMP (active gammas) in ``grad`` mode through one tensor hook per parameter.
* ``grad-fused``: the same through one multi-tensor multiply per modality before ``optimizer.step()``.
* ``lr``: PDMP in ``lr`` mode (a few dict operations per step).
* ``ogm-ge``: OGM-GE with noise (hook path), including ``observe`` of the per-modality logits; the
  noise and the device-to-host copy of the logits are part of the method, so this is its full cost.

Timing is *interleaved*: each block times ``--steps`` steps of every variant (after one untimed
step once its Modulator is attached), in an order shuffled per block, so drift in machine load hits
all variants alike. Per block and variant the log of (variant time / plain time) is one paired
observation; the ratio reported is the exponential of their mean, with a 95% paired t-interval over
blocks (Student t on the log ratios; blocks are taken as independent). Both wall time and this
process's CPU time are reported; on a shared machine CPU time is the less disturbed of the two (it
excludes time the process waits for a core).

    python -m benchmarks.torch_overhead_scale --blocks 100 --out benchmarks/reported/overhead/torch_overhead_scale.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.models_torch import FusionNet, TransformerEncoder
from benchmarks.torch_overhead import interleaved
from pdmp import OGMGE, PDMP
from pdmp.backends.torch import Modulator, concat_head_logits
from pdmp.stats import student_t_quantile

MODALITIES = ("audio", "image")
ALL_VARIANTS = ("plain", "plain-b", "grad-hooks", "grad-fused", "lr", "ogm-ge")


def build(depth: int, width: int, batch: int, seed: int) -> tuple[FusionNet, dict[str, torch.Tensor], torch.Tensor]:
    """Two ViT/AST-style encoders (4x4 patches, ``depth`` layers) with a concat head, and one batch."""
    torch.manual_seed(seed)
    encoders = {
        "audio": TransformerEncoder((1, 40, 48), width, depth=depth),
        "image": TransformerEncoder((1, 32, 32), width, depth=depth),
    }
    model = FusionNet(encoders, num_classes=10)
    inputs = {"audio": torch.randn(batch, 1, 40, 48), "image": torch.randn(batch, 1, 32, 32)}
    labels = torch.randint(0, 10, (batch,))
    return model, inputs, labels


def supports_fused() -> bool:
    """Whether this Modulator offers the multi-tensor path (``path="fused"``)."""
    import inspect

    return "path" in inspect.signature(Modulator).parameters


def attach(variant: str, model: FusionNet, optimizer: torch.optim.Optimizer) -> Modulator | None:
    """The Modulator that ``variant`` trains with (None for the plain variants)."""
    encoders: dict[str, nn.Module] = dict(model.encoders.items())
    paths = supports_fused()
    if variant in ("grad-hooks", "grad-fused"):
        policy = PDMP(list(MODALITIES), "audio", gamma_p=10.0, gamma_r=0.5)
        kwargs: dict[str, Any] = {"path": variant.removeprefix("grad-")} if paths else {}
        return Modulator(encoders, policy, mode="grad", optimizer=optimizer, **kwargs)
    if variant == "lr":
        policy = PDMP(list(MODALITIES), "audio", gamma_p=10.0, gamma_r=0.5)
        return Modulator(encoders, policy, mode="lr", optimizer=optimizer)
    if variant == "ogm-ge":
        return Modulator(encoders, OGMGE(list(MODALITIES), alpha=0.8), optimizer=optimizer)
    return None


def make_runner(
    template: FusionNet, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> Callable[[str, int], tuple[float, float]]:
    """``run(variant, steps)``: attach ``variant``'s Modulator, take one untimed step, then time
    ``steps`` steps; returns (wall, CPU) seconds per step, and detaches the Modulator.

    Every variant trains the same model with the same optimizer, so no variant gains or loses from
    where its copy of the weights happens to lie in memory (measured as a few percent between copies).
    """
    model = copy.deepcopy(template)
    head = model.head
    assert isinstance(head, nn.Linear)
    # One parameter group per modality from the start, as lr mode would split them: the same
    # optimizer layout (and foreach batching) for every variant.
    groups = [{"params": list(model.encoders[name].parameters())} for name in MODALITIES]
    optimizer = torch.optim.SGD(
        [*groups, {"params": list(head.parameters())}], lr=1e-3, momentum=0.9, weight_decay=1e-4
    )

    def run(variant: str, steps: int) -> tuple[float, float]:
        mod = attach(variant, model, optimizer)
        if mod is not None:
            mod.set_epoch(0)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            features = model.encode(inputs)
            if mod is not None and mod.policy.needs_logits:
                mod.observe(concat_head_logits(head, features), labels)
            nn.functional.cross_entropy(model.fuse(features), labels).backward()
            optimizer.step()
            if mod is not None:
                mod.step()

        step()  # untimed: the first step after switching variants
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        elapsed = ((time.perf_counter() - start_wall) / steps, (time.process_time() - start_cpu) / steps)
        if mod is not None:
            mod.remove()
        return elapsed

    return run


def t_interval(logs: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Ratio = exp(mean log ratio), with the paired Student-t interval over blocks, and the median."""
    n = len(logs)
    mean = statistics.fmean(logs)
    half = student_t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return {
        "ratio": math.exp(mean),
        "low": math.exp(mean - half),
        "high": math.exp(mean + half),
        "median": math.exp(statistics.median(logs)),
        "sd_log_per_block": statistics.stdev(logs),
    }


def fused_scale_cost(template: FusionNet, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    """Seconds the fused path's in-place multiply takes on real gradients (best of 30).

    Timed alone, so machine load barely disturbs it: the fused path's whole per-step work besides
    a few Python calls, to set against the interval of its ratio.
    """
    if not supports_fused():
        return float("nan")
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    mod = attach("grad-fused", model, optimizer)
    assert mod is not None
    nn.functional.cross_entropy(model.fuse(model.encode(inputs)), labels).backward()
    best = float("inf")
    for _ in range(30):
        start = time.perf_counter()
        mod._scale_gradients()
        best = min(best, time.perf_counter() - start)
    mod.remove()
    return best


def hooks_cost(template: FusionNet, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    """Seconds per backward pass spent inside the hook path's multiplies (median of 15 passes).

    Timed inside real backward passes (a product allocated per tensor, on gradients just computed),
    so it is far above the same multiplies timed in a loop; autograd's call into Python comes on top.
    """
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    mod = attach("grad-hooks", model, optimizer)
    assert mod is not None
    spent = [0.0]
    modulate = mod._modulate

    def timed(modality: str, grad: torch.Tensor, loss_scale: float) -> torch.Tensor | None:
        start = time.perf_counter()
        result = modulate(modality, grad, loss_scale)
        spent[0] += time.perf_counter() - start
        return result

    mod._modulate = timed  # type: ignore[method-assign]
    passes = []
    for _ in range(17):
        model.zero_grad(set_to_none=True)
        spent[0] = 0.0
        nn.functional.cross_entropy(model.fuse(model.encode(inputs)), labels).backward()
        passes.append(spent[0])
    mod.remove()
    return statistics.median(passes[2:])


def measure(
    variants: tuple[str, ...], *, depth: int, width: int, batch: int, blocks: int, steps: int, seed: int
) -> dict[str, Any]:
    template, inputs, labels = build(depth, width, batch, seed)
    run = make_runner(template, inputs, labels)
    wall, cpu = interleaved(run, variants, rounds=blocks, steps=steps, seed=seed)
    encoders = template.encoders
    result: dict[str, Any] = {
        "model": f"2 x ViT-style encoder (width {width}, depth {depth}) + concat head",
        "parameters": sum(p.numel() for p in template.parameters()),
        "parameter_tensors": sum(1 for _ in template.parameters()),
        "modulated_tensors": sum(1 for name in MODALITIES for _ in encoders[name].parameters()),
        "batch": batch,
        "blocks": blocks,
        "steps_per_block": steps,
        "step_ms_median": {
            clock: {v: 1e3 * statistics.median(times[v]) for v in variants}
            for clock, times in (("wall", wall), ("cpu", cpu))
        },
        "ratio": {},
    }
    result["hooks_multiply_ms"] = 1e3 * hooks_cost(template, inputs, labels)
    result["hooks_multiply_fraction_of_plain_step"] = (
        result["hooks_multiply_ms"] / result["step_ms_median"]["cpu"]["plain"]
    )
    result["fused_multiply_ms"] = 1e3 * fused_scale_cost(template, inputs, labels)
    result["fused_multiply_fraction_of_plain_step"] = (
        result["fused_multiply_ms"] / result["step_ms_median"]["cpu"]["plain"]
    )
    for clock, times in (("wall", wall), ("cpu", cpu)):
        result["ratio"][clock] = {
            v: t_interval([math.log(t / p) for t, p in zip(times[v], times["plain"], strict=True)])
            for v in variants
            if v != "plain"
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100, help="interleaved blocks (paired observations)")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per block")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=6, help="encoder layers per modality (12 tensors each)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=None, help=f"subset of {ALL_VARIANTS} (plain is always run)")
    parser.add_argument("--out", type=Path, default=Path("torch_overhead_scale.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    available = tuple(v for v in ALL_VARIANTS if v != "grad-fused" or supports_fused())
    chosen = tuple(args.variants or available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        parser.error(f"unknown or unavailable variants {unknown}; available: {available}")
    variants = ("plain", *(v for v in chosen if v != "plain"))
    r = measure(
        variants,
        depth=args.depth,
        width=args.width,
        batch=args.batch,
        blocks=args.blocks,
        steps=args.steps,
        seed=args.seed,
    )
    print(
        f"{r['model']}: {r['parameter_tensors']} parameter tensors ({r['modulated_tensors']} modulated), "
        f"batch {r['batch']}, {args.threads} thread(s), {r['blocks']} blocks x {r['steps_per_block']} steps"
    )
    share = r["hooks_multiply_fraction_of_plain_step"]
    print(f"hook path's multiplies inside backward: {r['hooks_multiply_ms']:.3f} ms = {share:.2%} of a plain step")
    if supports_fused():
        share = r["fused_multiply_fraction_of_plain_step"]
        print(f"fused path's multiply alone: {r['fused_multiply_ms']:.3f} ms = {share:.2%} of a plain step (CPU)")
    print("median step ms (wall):", ", ".join(f"{v} {t:.2f}" for v, t in r["step_ms_median"]["wall"].items()))
    for clock in ("cpu", "wall"):
        for variant, stats in r["ratio"][clock].items():
            print(
                f"  {clock:4s} {variant:10s} x{stats['ratio']:.4f}  95% CI [{stats['low']:.4f}, {stats['high']:.4f}]"
                f"  median x{stats['median']:.4f}"
            )
    report = {
        "benchmark": "torch_overhead_scale",
        "target": "grad-mode ratio <= 1.03 in the default path",
        "interval": "95% paired Student-t interval over blocks on log(variant / plain), exponentiated",
        "torch": torch.__version__,
        "machine": platform.platform(),
        "threads": args.threads,
        "command": "python -m benchmarks.torch_overhead_scale "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("blocks", args.blocks),
                ("steps", args.steps),
                ("batch", args.batch),
                ("depth", args.depth),
                ("width", args.width),
                ("threads", args.threads),
                ("seed", args.seed),
            )
        ),
        "result": r,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
