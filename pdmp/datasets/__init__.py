"""Multimodal datasets behind one framework-neutral interface.

Every dataset is a :class:`MultimodalDataset`: ``name``, ``modalities``, ``class_names``, and ``train`` /
``val`` / ``test`` :class:`Split` objects holding NumPy arrays per modality (float32; images
``(N, C, H, W)``, spectrograms ``(N, 1, n_mels, T)``, vectors ``(N, D)``) and int64 labels, plus a
``metadata`` dict recording how it was made. Adapters: :func:`torch_dataset` / :func:`torch_loader`
and :func:`tf_dataset` (frameworks are imported only when these are called).

- :func:`load_av_digits`: MNIST images + eSpeak NG spoken digits, in named regimes (built-in).
- :func:`load_mfeat`: UCI Multiple Features, three views pix/fou/mor by default (built-in).
- :func:`load_cremad`, :func:`load_ave`, :func:`load_kinetics_sounds`: the paper's datasets from a
  local folder (see :mod:`pdmp.datasets.folders` for the layout).

Guarantees: every argument is checked before anything is built or written; folder loaders never read
a path that resolves outside the dataset root; cache files carry a content checksum verified on every
load and are read without pickle; every split holds finite float32 inputs.
"""

from pdmp.datasets._base import MultimodalDataset, Split, stratified_split
from pdmp.datasets._cache import DatasetCacheError, cache_dir
from pdmp.datasets._espeak import EspeakUnavailableError
from pdmp.datasets.adapters import tf_dataset, torch_dataset, torch_loader
from pdmp.datasets.av_digits import (
    AV_DIGITS_REGIMES,
    UNDER_OPTIMIZATION_ENCODERS,
    AVDigitsConfig,
    DatasetCacheWarning,
    load_av_digits,
)
from pdmp.datasets.folders import (
    CREMAD_CLASSES,
    DatasetFolderError,
    DatasetFolderWarning,
    load_ave,
    load_cremad,
    load_kinetics_sounds,
)
from pdmp.datasets.mfeat import MFEAT_VIEWS, load_mfeat

__all__ = [
    "AV_DIGITS_REGIMES",
    "CREMAD_CLASSES",
    "MFEAT_VIEWS",
    "UNDER_OPTIMIZATION_ENCODERS",
    "AVDigitsConfig",
    "DatasetCacheError",
    "DatasetCacheWarning",
    "DatasetFolderError",
    "DatasetFolderWarning",
    "EspeakUnavailableError",
    "MultimodalDataset",
    "Split",
    "cache_dir",
    "load_av_digits",
    "load_ave",
    "load_cremad",
    "load_kinetics_sounds",
    "load_mfeat",
    "stratified_split",
    "tf_dataset",
    "torch_dataset",
    "torch_loader",
]
