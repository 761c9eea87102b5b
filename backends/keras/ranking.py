"""Stage 1 for Keras: train one small model per modality, evaluate on held-out data, rank.

Mirrors :func:`pdmp.backends.torch.rank_unimodal`: the training loop is Keras's own ``fit()`` (so its
progress bar is the progress output), the ranking is the core's :func:`pdmp.rank_modalities`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike

from pdmp._validation import check_labels, check_modality_names, check_same_modalities
from pdmp.metrics import Metric
from pdmp.ranking import Ranking, rank_modalities

Data = tuple[Mapping[str, ArrayLike], ArrayLike]


def rank_unimodal(
    factories: Mapping[str, Callable[[], keras.Model]],
    train: Data,
    val: Data,
    *,
    epochs: int = 5,
    subset: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    metric: str | Metric = "accuracy",
    progress: bool = True,
) -> Ranking:
    """Rank modalities by the held-out score of a unimodal model trained on each.

    Args:
        factories: per modality, a function returning a fresh model that maps that modality's input
            to class logits. If the model comes back uncompiled it is compiled with
            ``Adam(lr)`` and sparse categorical cross-entropy on logits; compile it in the factory to
            choose otherwise (``lr`` is then unused).
        train, val: ``(inputs, labels)`` where ``inputs`` maps every modality to an array of samples
            (the same samples, in the same order, across modalities) and ``labels`` are class indices.
        epochs: training epochs per unimodal model (the ranking's budget; the paper reports that a
            short budget usually suffices).
        subset: fraction of the training samples to use, drawn once with ``seed`` and shared by all
            modalities, so every model sees the same samples.
        seed: seeds the subset and ``keras.utils.set_random_seed`` before each model is built (this
            also seeds Python's, NumPy's and TensorFlow's global generators).
        metric: passed to :func:`pdmp.rank_modalities`.
        progress: show Keras's progress bars (``verbose=1``) and the modality being trained.

    Returns:
        The core's :class:`pdmp.Ranking`, with the budget recorded in ``ranking.budget``.
    """
    names = check_modality_names(factories.keys(), where="rank_unimodal factories")
    if not 0.0 < float(subset) <= 1.0:
        raise ValueError(f"subset must be a fraction in (0, 1], got {subset!r}; use 1.0 for all training samples")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    train_x, train_y = _unpack(train, names, where="train")
    val_x, val_y = _unpack(val, names, where="val")
    count = len(train_y)
    size = max(1, math.ceil(float(subset) * count))
    chosen = np.sort(np.random.default_rng(seed).permutation(count)[:size])
    verbose = 1 if progress else 0
    predictions: dict[str, np.ndarray] = {}
    for name in names:
        keras.utils.set_random_seed(seed)
        model = factories[name]()
        if not isinstance(model, keras.Model):
            raise TypeError(f"factories[{name!r}]() returned {type(model).__name__}; it must return a keras.Model")
        if not model.compiled:
            model.compile(
                optimizer=keras.optimizers.Adam(lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
        if progress:
            print(f"pdmp: training the unimodal {name!r} model ({size} samples, {epochs} epoch(s))")
        model.fit(train_x[name][chosen], train_y[chosen], epochs=int(epochs), batch_size=batch_size, verbose=verbose)
        predictions[name] = np.asarray(model.predict(val_x[name], batch_size=batch_size, verbose=verbose))
    budget = {"epochs": int(epochs), "subset": float(subset), "lr": float(lr), "batch_size": int(batch_size)}
    return rank_modalities(predictions, val_y, metric=metric, seed=seed, budget={**budget, "framework": "keras"})


def _unpack(data: Any, names: tuple[str, ...], *, where: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not isinstance(data, tuple) or len(data) != 2 or not isinstance(data[0], Mapping):
        raise TypeError(
            f"{where} must be a tuple (inputs, labels) with inputs a dict {{modality: array}}, "
            f"got {type(data).__name__}"
        )
    inputs, labels = data
    check_same_modalities(inputs.keys(), names, where=f"rank_unimodal {where} inputs")
    y = check_labels(labels, name=f"{where} labels")
    arrays = {name: np.asarray(inputs[name]) for name in names}
    for name, array in arrays.items():
        if len(array) != len(y):
            raise ValueError(
                f"{where}: inputs[{name!r}] has {len(array)} samples but labels has {len(y)}; "
                "give every modality the same samples"
            )
    return arrays, y
