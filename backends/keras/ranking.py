"""Stage 1 for Keras: train one small model per modality on a budget, evaluate held out, rank.

Mirrors :func:`pdmp.backends.torch.rank_unimodal` (same arguments, same budget record); the training
loop is Keras's own ``fit()``, so its progress bar is the progress output, and the ranking is the
core's :func:`pdmp.rank_modalities`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from pdmp._validation import check_labels
from pdmp.metrics import Metric, resolve_metric
from pdmp.ranking import Ranking, check_unimodal_request, rank_unimodal_outputs

OptimizerFactory = Callable[[float], keras.optimizers.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
}


def rank_unimodal(
    factories: Mapping[str, Callable[[], keras.Model]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = 1.0,
    lr: float,
    optimizer: str | OptimizerFactory = "sgd",
    batch_size: int = 64,
    seed: int = 0,
    metric: str | Metric = "accuracy",
    progress: bool = True,
    n_bootstrap: int = 0,
    warn_margin: float = 0.01,
) -> Ranking:
    """Train each modality's unimodal Keras model (encoder + own head) on a budget and rank the modalities.

    Args:
        factories: per modality, a callable returning a fresh, uncompiled model that maps that
            modality's input to class logits. It is compiled here with ``optimizer`` and sparse
            categorical cross-entropy on logits.
        train, val: per modality, ``(X, y)`` arrays. Validation sets are normally paired (same samples,
            same labels); then the core can bootstrap over them.
        epochs: passes over the training subset.
        subset: fraction of each training set used (the same seeded sample indices for every modality
            of equal size, so paired data stays paired).
        lr: learning rate.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, or ``f(lr)`` returning a Keras optimizer.
        batch_size, seed: mini-batch size; seed of the subset, shuffling and model initialisation
            (``keras.utils.set_random_seed``, which also seeds Python's, NumPy's and TF's global RNGs).
        metric: ``"accuracy"``, ``"macro_f1"`` or ``f(labels, predicted_classes)``.
        progress: show Keras's progress bar while each model trains and predicts.
        n_bootstrap, warn_margin: passed to :func:`pdmp.rank_modalities`.
    """
    names, epochs, batch_size = check_unimodal_request(
        factories, train, val, epochs=epochs, subset=subset, batch_size=batch_size, lr=lr
    )
    make_optimizer, optimizer_name = _optimizer_factory(optimizer)
    resolve_metric(metric)  # fail before training on an unknown metric
    verbose = 1 if progress else 0

    arrays = {
        name: (*_as_arrays(train[name], where=f"train[{name!r}]"), *_as_arrays(val[name], where=f"val[{name!r}]"))
        for name in names
    }
    for name in names:  # every label against its model's number of classes, before any model trains
        x_train, y_train, _, y_val = arrays[name]
        classes = _output_width(_make_model(factories, name, seed), x_train)
        check_labels(y_train, num_classes=classes, name=f"train[{name!r}] labels")
        check_labels(y_val, num_classes=classes, name=f"val[{name!r}] labels")

    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    train_samples: dict[str, int] = {}
    for index, name in enumerate(names):
        x_train, y_train, x_val, y_val = arrays[name]
        n_subset = max(1, round(subset * len(y_train)))
        chosen = np.random.default_rng(seed).permutation(len(y_train))[:n_subset]
        train_samples[name] = n_subset
        model = _make_model(factories, name, seed)
        model.compile(
            optimizer=make_optimizer(float(lr)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if progress:
            print(f"rank {name} ({index + 1}/{len(names)}): {n_subset} samples, {epochs} epoch(s)")
        model.fit(x_train[chosen], y_train[chosen], epochs=epochs, batch_size=batch_size, verbose=verbose)
        logits[name] = np.asarray(model.predict(x_val, batch_size=batch_size, verbose=verbose), dtype=np.float64)
        labels[name] = y_val

    budget = {
        "backend": "keras",
        "epochs": epochs,
        "subset": float(subset),
        "train_samples": train_samples,
        "batch_size": batch_size,
        "lr": float(lr),
        "optimizer": optimizer_name,
        "seed": seed,
    }
    return rank_unimodal_outputs(
        logits, labels, budget=budget, metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin
    )


def _optimizer_factory(optimizer: str | OptimizerFactory) -> tuple[OptimizerFactory, str]:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}, or pass f(lr)")
        return OPTIMIZERS[optimizer], optimizer
    if not callable(optimizer):
        raise TypeError(f"optimizer must be a name or f(lr) returning a Keras optimizer, got {optimizer!r}")
    return optimizer, getattr(optimizer, "__name__", type(optimizer).__name__)


def _make_model(factories: Mapping[str, Callable[[], keras.Model]], name: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)  # the same initial weights every time it is called
    model = factories[name]()
    if not isinstance(model, keras.Model):
        raise TypeError(f"factories[{name!r}]() returned {type(model).__name__}; it must return a keras.Model")
    return model


def _output_width(model: keras.Model, x: np.ndarray) -> int:
    """The number of classes the model scores: the width of its output on one sample."""
    out = model(x[:1], training=False)
    if len(out.shape) != 2:
        raise ValueError(
            f"{model.name!r} returns shape {tuple(out.shape)} for one sample; rank_unimodal needs (batch, classes) "
            "logits"
        )
    return int(out.shape[-1])


def _as_arrays(data: Any, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{where} must be a pair (X, y), got {type(data).__name__}")
    x, y = np.asarray(data[0]), check_labels(data[1], name=f"{where} labels")
    if len(x) != len(y):
        raise ValueError(f"{where}: X has {len(x)} samples but y has {len(y)}; pass the labels of the same samples")
    return x, y
