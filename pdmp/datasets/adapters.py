"""Thin adapters from a :class:`~pdmp.datasets.Split` to torch and tf.data. Frameworks are imported here only.

Each sample is ``(inputs, label)`` with ``inputs`` a dict ``{modality: array}``, the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pdmp._validation import check_positive_int, check_seed
from pdmp.datasets._base import Split

__all__ = ["tf_dataset", "torch_dataset", "torch_loader"]


def _modalities(split: Split, modalities: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(modalities, (str, bytes)):
        raise TypeError(f"modalities must be a list of names such as ['audio'], got the string {modalities!r}")
    mods = tuple(modalities) if modalities is not None else split.modalities
    unknown = [m for m in mods if m not in split.inputs]
    if unknown:
        raise KeyError(f"unknown modality {unknown[0]!r}; known: {', '.join(split.modalities)}")
    return mods


def torch_dataset(split: Split, modalities: Sequence[str] | None = None) -> Any:
    """A map-style ``torch.utils.data.Dataset`` yielding ``({modality: float32 tensor}, int64 label)``.

    The tensors share memory with the split's arrays (``torch.from_numpy``).
    """
    import torch
    from torch.utils.data import Dataset

    mods = _modalities(split, modalities)
    tensors = {m: torch.from_numpy(np.ascontiguousarray(split.inputs[m])) for m in mods}
    labels = torch.from_numpy(np.ascontiguousarray(split.labels))

    class _SplitDataset(Dataset):
        modalities = mods

        def __len__(self) -> int:
            return int(labels.shape[0])

        def __getitem__(self, i: int) -> tuple[dict[str, Any], Any]:
            return {m: t[i] for m, t in tensors.items()}, labels[i]

    return _SplitDataset()


def torch_loader(
    split: Split,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    **kwargs: Any,
) -> Any:
    """A ``torch.utils.data.DataLoader`` over :func:`torch_dataset` (batches of dicts; seeded shuffling)."""
    check_positive_int(batch_size, name="batch_size")
    check_seed(seed)
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(torch_dataset(split, modalities), batch_size=batch_size, shuffle=shuffle, generator=gen, **kwargs)


def tf_dataset(
    split: Split,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    channels_last: bool = False,
) -> Any:
    """A batched ``tf.data.Dataset`` of ``({modality: float32}, int64 label)``.

    ``channels_last=True`` moves the channel axis of image/spectrogram inputs last, as Keras' conv
    layers expect by default.
    """
    check_positive_int(batch_size, name="batch_size")
    check_seed(seed)
    mods = _modalities(split, modalities)
    import tensorflow as tf

    inputs = {}
    for m in mods:
        x = split.inputs[m]
        inputs[m] = np.moveaxis(x, 1, -1) if channels_last and x.ndim == 4 else x
    ds = tf.data.Dataset.from_tensor_slices((inputs, split.labels))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)
