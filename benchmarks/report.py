"""Aggregate run JSONs into the markdown table and the PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.protocol import mean_std
from pdmp.stats import paired_difference

SETTING_KEYS = ("dataset", "backend", "encoder", "fusion", "optimizer")


def load_runs(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("runs/*.json"))]


def _setting(run: dict[str, Any]) -> tuple[str, ...]:
    # Runs from before the optimizer choice have no "optimizer" key: they were all SGD.
    return tuple(str(run.get(key, "sgd") if key == "optimizer" else run[key]) for key in SETTING_KEYS)


def _parts(setting: tuple[str, ...]) -> list[str]:
    return [part for key, part in zip(SETTING_KEYS, setting, strict=True) if (key, part) != ("optimizer", "sgd")]


def _by_seed(runs: Iterable[dict[str, Any]], method: str, key: str, split: str = "test") -> dict[int, float]:
    return {run["seed"]: run[key][split]["acc"] for run in runs if run["method"]["name"] == method}


def tuning_seeds(group: Sequence[dict[str, Any]]) -> set[int]:
    """Seeds that tuning candidates (names with ``[``, e.g. ``pdmp[gp=5,...]``) ran on.

    A tuned method's run on such a seed is the winning candidate's own run, chosen because it did well
    there: optimistically biased, so paired comparisons of tuned methods leave these seeds out.
    """
    return {run["seed"] for run in group if "[" in run["method"]["name"]}


#: Table order: unimodal rows, baselines, PDMP, controls, tuned methods, then the tuning candidates.
METHOD_ORDER = (
    "unimodal",
    "joint",
    "ogm_ge",
    "pdmp",
    "symmetric",
    "inverse",
    "joint_lr_tuned",
    "ogm_ge_tuned",
    "pdmp_tuned",
)


def _method_order(name: str) -> tuple[int, str]:
    if name.startswith("unimodal"):
        return 0, name
    if name in METHOD_ORDER:
        return METHOD_ORDER.index(name), name
    return len(METHOD_ORDER), name


def _difference(group: Sequence[dict[str, Any]], a: str, b: str, key: str) -> str:
    first, second = _by_seed(group, a, key), _by_seed(group, b, key)
    excluded = tuning_seeds(group) if "tuned" in a or "tuned" in b else set()
    seeds = sorted((set(first) & set(second)) - excluded)
    if not seeds:
        return "— (no paired seeds outside the tuning seeds)"
    diff = paired_difference([first[s] for s in seeds], [second[s] for s in seeds])
    return diff.format(100.0, 2)


def _best_unimodal(group: Sequence[dict[str, Any]], unimodal: Sequence[str]) -> str:
    """The unimodal model with the highest mean *validation* accuracy (final epoch): never chosen on test."""
    return max(unimodal, key=lambda m: np.mean(list(_by_seed(group, m, "final", "val").values())))


def _paired_lines(group: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    """PDMP (default and tuned) minus every other method, paired by seed, at the final and best-val epochs;
    and joint minus the best unimodal model (is there under-optimization?)."""
    lines: list[str] = []
    baselines = [m for m in methods if not m.startswith("unimodal") and "[" not in m]
    excluded = sorted(tuning_seeds(group))
    for reference in ("pdmp", "pdmp_tuned"):
        if reference not in methods:
            continue
        lines += [
            "",
            f"Paired differences, **{reference}** minus each method (test accuracy points, mean over seeds "
            "[95% paired Student-t interval], verdict, exact sign-flip p, n seeds; final epoch | "
            "best-validation epoch)"
            + (f"; comparisons with a tuned method leave out the tuning seed(s) {excluded}" if excluded else "")
            + ":",
            "",
        ]
        for method in baselines:
            if method != reference:
                lines.append(
                    f"- vs {method}: {_difference(group, reference, method, 'final')} | "
                    f"{_difference(group, reference, method, 'best_val')}"
                )
    unimodal = [m for m in methods if m.startswith("unimodal")]
    if unimodal and "joint" in methods:
        best = _best_unimodal(group, unimodal)
        lines.append(
            f"- joint minus best unimodal by validation ({best}): {_difference(group, 'joint', best, 'final')} | "
            f"{_difference(group, 'joint', best, 'best_val')}"
        )
    return lines


def summary_table(runs: Sequence[dict[str, Any]]) -> str:
    """One section per setting: a row per method, then PDMP minus each baseline, paired by seed."""
    lines: list[str] = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_setting(run)].append(run)
    for setting, group in sorted(groups.items()):
        lines += [f"### {' / '.join(_parts(setting))}", ""]
        ranking = next((run.get("ranking") for run in group if run.get("ranking")), None)
        if ranking:
            scores = ", ".join(f"{name} {ranking['scores'][name] * 100:.1f}" for name in ranking["order"])
            lines += [
                f"Ranking (validation accuracy of unimodal models): {scores}; dominant: **{ranking['order'][0]}**",
                "",
            ]
        lines += [
            "| method | seeds | test acc (final) | test acc (best val) | test macro-F1 (final) |"
            " weak-modality share | weak-modality decomposed acc |",
            "|---|---|---|---|---|---|---|",
        ]
        methods = sorted(dict.fromkeys(run["method"]["name"] for run in group), key=_method_order)
        excluded = tuning_seeds(group)
        for method in methods:
            chosen = [
                run
                for run in group
                if run["method"]["name"] == method and not ("tuned" in method and run["seed"] in excluded)
            ]
            if not chosen:
                continue
            final = [run["final"]["test"]["acc"] for run in chosen]
            best = [run["best_val"]["test"]["acc"] for run in chosen]
            f1 = [run["final"]["test"]["f1"] for run in chosen]
            share, decomposed = "—", "—"
            if ranking and "dependency" in chosen[0]["final"]["test"]:
                weak = ranking["order"][-1]
                share = mean_std([run["final"]["test"]["dependency"][weak] for run in chosen])
                decomposed = mean_std([run["final"]["test"]["decomposed_acc"][weak] for run in chosen])
            lines.append(
                f"| {method} | {len(chosen)} | {mean_std(final)} | {mean_std(best)} | {mean_std(f1)} |"
                f" {share} | {decomposed} |"
            )
        if excluded and any("tuned" in m for m in methods):
            lines += ["", f"Tuned methods' rows leave out the tuning seed(s) {sorted(excluded)}."]
        lines += _paired_lines(group, methods)
        lines.append("")
    return "\n".join(lines)


def plot_runs(runs: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """Per setting: validation accuracy per method, weak-modality share, and coefficients, over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_setting(run)].append(run)
    for setting, group in sorted(groups.items()):
        figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        ranking = next((run.get("ranking") for run in group if run.get("ranking")), None)
        for method in dict.fromkeys(run["method"]["name"] for run in group):
            chosen = [run for run in group if run["method"]["name"] == method]
            curves = np.array([[epoch["val"]["acc"] for epoch in run["history"]] for run in chosen])
            line = axes[0].plot(curves.mean(axis=0) * 100, label=method)[0]
            if ranking and chosen[0]["history"][0]["val"].get("dependency"):
                weak = ranking["order"][-1]
                share = np.array([[e["val"]["dependency"][weak] for e in run["history"]] for run in chosen])
                axes[1].plot(share.mean(axis=0), color=line.get_color(), label=method)
            if chosen[0]["history"][0].get("coefficients"):
                for name, style in zip(chosen[0]["history"][0]["coefficients"], ("-", "--", ":"), strict=False):
                    values = [e["coefficients"][name] for e in chosen[0]["history"]]
                    axes[2].plot(values, style, color=line.get_color(), label=f"{method}: {name}")
        axes[0].set(title="validation accuracy (mean over seeds)", xlabel="epoch", ylabel="%")
        weak_name = ranking["order"][-1] if ranking else "?"
        axes[1].set(title=f"share of weak modality ({weak_name}) inside the fused model", xlabel="epoch")
        axes[2].set(title="coefficients (seed 0, mean per epoch)", xlabel="epoch", yscale="log")
        for axis in axes:
            if axis.lines:
                axis.legend(fontsize=7)
        figure.suptitle(" / ".join(_parts(setting)))
        figure.tight_layout()
        path = folder / f"{'_'.join(_parts(setting)).replace(':', '-')}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
