"""The framework-neutral dataset interface: NumPy arrays per modality, labels, names, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MultimodalDataset", "Split", "stratified_split"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: ``inputs[modality]`` is a float32 array with N rows, ``labels`` int64 of shape (N,).

    Layouts: images ``(N, C, H, W)``, log-mel spectrograms ``(N, 1, n_mels, T)``, vectors ``(N, D)``.
    ``extras`` holds per-sample bookkeeping (e.g. ``speaker`` ids, source indices), never model inputs.
    """

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        if (
            labels.size
            and labels.dtype.kind not in "iu"
            and (labels.dtype.kind != "f" or not np.all(np.isfinite(labels) & (labels == np.round(labels))))
        ):
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        fixed = {}
        for name, arr in self.inputs.items():
            arr = np.asarray(arr)
            if arr.ndim == 0 or arr.shape[0] != labels.shape[0]:
                rows = arr.shape[0] if arr.ndim else "no"
                raise ValueError(f"modality {name!r} has {rows} rows but there are {labels.shape[0]} labels")
            if arr.dtype.kind not in "iuf":
                raise TypeError(f"modality {name!r} must hold real numbers, got dtype {arr.dtype}")
            arr = arr.astype(np.float32, copy=False)
            finite = np.isfinite(arr)
            if not finite.all():
                # Models silently train on NaN/inf (or produce NaN losses far from the cause): refuse here.
                raise ValueError(
                    f"modality {name!r} holds {int(arr.size - finite.sum())} non-finite value(s) "
                    f"(first in row {int(np.argwhere(~finite)[0][0])}); check the data source or its standardisation"
                )
            fixed[name] = arr
        object.__setattr__(self, "inputs", fixed)
        for name, arr in self.extras.items():
            if len(arr) != labels.shape[0]:
                raise ValueError(f"extra {name!r} has {len(arr)} rows but there are {labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def subset(self, index: np.ndarray | slice) -> Split:
        """Rows ``index`` of every array (a view or a copy, as NumPy indexing gives)."""
        return Split(
            {k: v[index] for k, v in self.inputs.items()},
            self.labels[index],
            {k: np.asarray(v)[index] for k, v in self.extras.items()},
        )

    def select(self, modalities: tuple[str, ...] | list[str]) -> Split:
        """The same rows with only ``modalities`` (e.g. for a unimodal model)."""
        unknown = [m for m in modalities if m not in self.inputs]
        if unknown:
            raise KeyError(f"unknown modality {unknown[0]!r}; known: {', '.join(self.inputs)}")
        return Split({m: self.inputs[m] for m in modalities}, self.labels, self.extras)

    def to_torch(self, modalities: tuple[str, ...] | None = None) -> Any:
        """A ``torch.utils.data.Dataset`` over this split (see :func:`pdmp.datasets.torch_dataset`)."""
        from pdmp.datasets.adapters import torch_dataset

        return torch_dataset(self, modalities=modalities)

    def to_tf(self, batch_size: int = 64, **kwargs: Any) -> Any:
        """A batched ``tf.data.Dataset`` over this split (see :func:`pdmp.datasets.tf_dataset`)."""
        from pdmp.datasets.adapters import tf_dataset

        return tf_dataset(self, batch_size, **kwargs)


@dataclass(frozen=True)
class MultimodalDataset:
    """A labelled multimodal dataset with fixed train / validation / test splits.

    Choose hyperparameters on ``val`` only; ``test`` is for the final number.
    """

    name: str
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        for split_name in SPLITS:
            split = getattr(self, split_name)
            if tuple(split.inputs) != self.modalities:
                raise ValueError(
                    f"split {split_name!r} has modalities {tuple(split.inputs)}, expected {self.modalities}"
                )
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(self.class_names)):
                raise ValueError(
                    f"split {split_name!r} has labels outside 0..{len(self.class_names) - 1} "
                    f"({len(self.class_names)} class names)"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        split: Split = getattr(self, name)
        return split

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each modality."""
        return {m: tuple(self.train.inputs[m].shape[1:]) for m in self.modalities}

    def nbytes(self) -> int:
        return int(sum(a.nbytes for s in SPLITS for a in self.split(s).inputs.values()))

    def summary(self) -> str:
        sizes = "/".join(str(len(self.split(s))) for s in SPLITS)
        shapes = ", ".join(f"{m} {self.shapes()[m]}" for m in self.modalities)
        return (
            f"{self.name}: {self.num_classes} classes, train/val/test {sizes}, {shapes}, {self.nbytes() / 1e6:.1f} MB"
        )


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle each class with ``rng`` and cut it by ``fractions``; returns sorted index arrays per part."""
    fr = np.asarray(fractions, dtype=float)
    if np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(fr)[:-1] * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]
