"""Measure the built-in datasets: build/load times, sizes, unimodal accuracies per regime, noise sweeps.

    python benchmarks/data_report.py                 # everything (~15 min on 2 CPU cores)
    python benchmarks/data_report.py --skip-sweep    # regimes and timings only

Unimodal models: the small CNN of ``data_common`` per modality (an MLP for vector views), Adam,
cosine schedule, ``--epochs`` epochs, learning rate chosen on validation from ``--lrs``, the epoch
with the best validation accuracy reported on test. Writes ``benchmarks/results/data_report.json``
and ``.md`` (and ``data_noise_sweep.png`` when matplotlib is there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from data_common import tuned

from pdmp.datasets import load_av_digits, load_mfeat


def timings(regime: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="pdmp-data-report-")
    try:
        t0 = time.perf_counter()
        ds = load_av_digits(regime, cache_dir=tmp, progress=False)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_av_digits(regime, cache_dir=tmp, progress=False)
        load = time.perf_counter() - t0
        assert again.metadata["cache"]["hit"]
        disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "build_s": round(build, 1),
        "synthesis_s": ds.metadata["build_seconds"]["synthesis"],
        "cache_load_s": round(load, 2),
        "memory_mb": round(ds.nbytes() / 1e6, 1),
        "disk_mb": round(disk / 1e6, 1),
        "summary": ds.summary(),
    }


def unimodal(ds, modality: str, seeds: list[int], lrs: tuple[float, ...], epochs: int) -> dict:
    rows = []
    for seed in seeds:
        best, _ = tuned(ds, (modality,), lrs, epochs=epochs, seed=seed)
        rows.append({"seed": seed, "lr": best.lr, "epoch": best.best_epoch, "val": best.val_acc, "test": best.test_acc})
    val, test = np.mean([r["val"] for r in rows]), np.mean([r["test"] for r in rows])
    return {
        "val": round(float(val), 4),
        "test": round(float(test), 4),
        "val_minus_test": round(float(val - test), 4),
        "runs": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--lrs", type=float, nargs="*", default=[1e-3, 3e-3])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--regimes", nargs="*", default=["image_dominant", "audio_dominant"])
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/data_report")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lrs = tuple(args.lrs)
    report: dict = {"settings": vars(args), "regimes": {}, "sweep": {}, "mfeat": {}}

    for regime in args.regimes:
        t = timings(regime)
        print(
            f"{regime}: {t['summary']}; build {t['build_s']}s (synthesis {t['synthesis_s']}s), "
            f"cache load {t['cache_load_s']}s, {t['disk_mb']} MB on disk",
            flush=True,
        )
        ds = load_av_digits(regime, progress=False)
        acc = {m: unimodal(ds, m, args.seeds, lrs, args.epochs) for m in ds.modalities}
        for m, a in acc.items():
            print(f"  {m:5s} val {a['val']:.3f} test {a['test']:.3f} (val-test {a['val_minus_test']:+.3f})", flush=True)
        report["regimes"][regime] = {"config": ds.metadata["config"], "timing": t, "unimodal": acc}

    if not args.skip_sweep:
        for knob, values, modality in (
            ("audio_snr_db", [-10.0, -5.0, 0.0, 5.0, 10.0], "audio"),
            ("image_noise_std", [0.0, 0.5, 1.0, 1.5, 2.0], "image"),
        ):
            pts = []
            for v in values:
                ds = load_av_digits("image_dominant", progress=False, **{knob: v})
                a = unimodal(ds, modality, args.seeds[:1], lrs, args.epochs)
                pts.append({"value": v, "val": a["val"], "test": a["test"]})
                print(f"  sweep {knob}={v:g}: {modality} val {a['val']:.3f} test {a['test']:.3f}", flush=True)
            report["sweep"][knob] = {"modality": modality, "points": pts}

    ds = load_mfeat()
    for view in ds.modalities:
        a = unimodal(ds, view, args.seeds, lrs, 30)
        report["mfeat"][view] = a
        print(f"mfeat {view}: val {a['val']:.3f} test {a['test']:.3f}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_name("data_noise_sweep.png"))
    print(f"wrote {out}.json and .md")


def markdown(r: dict) -> str:
    lines = [
        "| regime | image val / test | audio val / test | build s | cache load s | MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in r["regimes"].items():
        u, t = g["unimodal"], g["timing"]
        lines.append(
            f"| {name} | {u['image']['val']:.3f} / {u['image']['test']:.3f} | {u['audio']['val']:.3f} / "
            f"{u['audio']['test']:.3f} | {t['build_s']} | {t['cache_load_s']} | {t['memory_mb']} |"
        )
    for knob, s in r["sweep"].items():
        lines += ["", f"| {knob} | {s['modality']} val | {s['modality']} test |", "|---|---|---|"]
        lines += [f"| {p['value']:g} | {p['val']:.3f} | {p['test']:.3f} |" for p in s["points"]]
    if r["mfeat"]:
        lines += ["", "| mfeat view | val | test |", "|---|---|---|"]
        lines += [f"| {v} | {a['val']:.3f} | {a['test']:.3f} |" for v, a in r["mfeat"].items()]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    if not r["sweep"]:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(r["sweep"]), figsize=(4.5 * len(r["sweep"]), 3.2))
    for ax, (knob, s) in zip(np.atleast_1d(axes), r["sweep"].items(), strict=True):
        xs = [p["value"] for p in s["points"]]
        ax.plot(xs, [p["test"] for p in s["points"]], "o-", label=f"{s['modality']} only (test)")
        ax.set_xlabel(knob)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
