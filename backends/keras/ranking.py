"""Stage 1 for Keras: train one small model per modality on a budget, evaluate held out, rank.

Mirrors :func:`pdmp.backends.torch.rank_unimodal` (same arguments, same budget record, the same
:class:`pdmp.UnimodalReport` with ``return_details=True``); the training loop is Keras's own ``fit()``,
so its progress bar is the progress output, and the ranking is the core's: each seed's models are
ranked by :func:`pdmp.rank_modalities` and several training seeds are combined by
:func:`pdmp.combine_rankings` (:meth:`pdmp.ranking.UnimodalCall.run`).

The training recipe can be the multimodal model's: an optimizer factory (``f()`` or ``f(lr)``), whose
learning rate may be a ``keras.optimizers.schedules.LearningRateSchedule`` (Keras's learning-rate
schedule, advanced per optimizer step; it takes the place of torch's ``scheduler=``), and
``weight_decay=`` for the named optimizers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import keras
import numpy as np

from pdmp._validation import check_labels
from pdmp.metrics import Metric
from pdmp.ranking import (
    FrameworkExamples,
    Ranking,
    TrainedUnimodal,
    TrainingCurve,
    UnimodalReport,
    check_optimizer_choice,
    check_rank_unimodal_call,
    factory_passes_lr,
    warn_unused_lr,
)

#: ``f(lr)`` or ``f()`` returning a fresh Keras optimizer (a new one for every model).
OptimizerFactory = Callable[..., keras.optimizers.Optimizer]

OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "sgd": lambda lr, **options: keras.optimizers.SGD(lr, momentum=0.9, **options),
    "adam": lambda lr, **options: keras.optimizers.Adam(lr, **options),
    "adamw": lambda lr, **options: keras.optimizers.AdamW(lr, **options),
}
EXAMPLES = FrameworkExamples(
    model="lambda: keras.Sequential([keras.layers.Dense(classes)])",
    optimizer="a Keras optimizer",
    optimizer_factory="lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01)",
    decay_factory="lambda: keras.optimizers.SGD(1e-3, momentum=0.9, weight_decay=1e-4)",
)


@dataclass(frozen=True)
class _Recipe:
    """The checked training recipe: how to build each model's optimizer, and what the budget records."""

    make_optimizer: Callable[[], keras.optimizers.Optimizer]
    budget: dict[str, Any]
    passes_lr: bool


@overload
def rank_unimodal(
    factories: Mapping[str, Callable[[], keras.Model]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = ...,
    lr: float | None = ...,
    optimizer: str | OptimizerFactory = ...,
    weight_decay: float | None = ...,
    batch_size: int = ...,
    seed: int | None = ...,
    seeds: Sequence[int] | None = ...,
    metric: str | Metric = ...,
    progress: bool = ...,
    n_bootstrap: int = ...,
    warn_margin: float = ...,
    return_details: Literal[False] = ...,
) -> Ranking: ...


@overload
def rank_unimodal(
    factories: Mapping[str, Callable[[], keras.Model]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = ...,
    lr: float | None = ...,
    optimizer: str | OptimizerFactory = ...,
    weight_decay: float | None = ...,
    batch_size: int = ...,
    seed: int | None = ...,
    seeds: Sequence[int] | None = ...,
    metric: str | Metric = ...,
    progress: bool = ...,
    n_bootstrap: int = ...,
    warn_margin: float = ...,
    return_details: Literal[True],
) -> UnimodalReport: ...


def rank_unimodal(
    factories: Mapping[str, Callable[[], keras.Model]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = 1.0,
    lr: float | None = None,
    optimizer: str | OptimizerFactory = "sgd",
    weight_decay: float | None = None,
    batch_size: int = 64,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    metric: str | Metric = "accuracy",
    progress: bool = True,
    n_bootstrap: int = 0,
    warn_margin: float = 0.01,
    return_details: bool = False,
) -> Ranking | UnimodalReport:
    """Train each modality's unimodal Keras model (encoder + own head) on a budget and rank the modalities.

    Args:
        factories: per modality, a callable returning a fresh, uncompiled model that maps that
            modality's input to class logits. It is compiled here with the optimizer and sparse
            categorical cross-entropy on logits.
        train, val: per modality, ``(X, y)`` arrays; ``y`` holds whole-number class indices below the
            models' output width (checked before training). Validation sets are normally paired (same
            samples, same labels); then the core can bootstrap over them.
        epochs: passes over the training subset.
        subset: fraction of each training set used (the same seeded sample indices for every modality
            of equal size, so paired data stays paired).
        lr: learning rate; required with a named optimizer or a factory ``f(lr)``, optional with a
            factory ``f()`` that sets its own.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, or a factory returning a fresh
            Keras optimizer: ``f()`` (e.g. ``lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01)``,
            the recipe of the multimodal model) or ``f(lr)``. A learning-rate schedule goes into the
            optimizer: ``lambda: keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1,
            decay_steps=epochs * steps_per_epoch), momentum=0.9)``, where an epoch has
            ``ceil(round(subset * len(train)) / batch_size)`` steps.
        weight_decay: with a named optimizer, its ``weight_decay`` (``None``: Keras's default, none for
            SGD and Adam, 0.004 for AdamW). Keras decays weights decoupled from the gradient
            (``w -= lr * wd * w``), where torch's SGD and Adam add ``wd * w`` to the gradient. A factory
            sets its own, so then it must stay ``None``.
        batch_size: mini-batch size.
        seed: the training seed (default 0): seed of the subset, shuffling and model initialisation
            (``keras.utils.set_random_seed``, which also seeds Python's, NumPy's and TF's global RNGs),
            and of the bootstrap.
        seeds: instead of ``seed``, several training seeds, e.g. ``(0, 1, 2)``: every unimodal model is
            trained once per seed (each seed as ``seed`` would be) and the per-seed rankings are
            combined by :func:`pdmp.combine_rankings` (seed means, ``seed_agreement``, a
            :class:`~pdmp.RankingWarning` when the seeds disagree). Costs one training per seed.
        metric: ``"accuracy"``, ``"macro_f1"`` or ``f(labels, predicted_classes)``.
        progress: show Keras's progress bar while each model trains and predicts.
        n_bootstrap, warn_margin: passed to :func:`pdmp.rank_modalities`.
        return_details: return a :class:`pdmp.UnimodalReport` (the ranking plus the trained models,
            their validation logits and per-epoch :class:`pdmp.TrainingCurve`) instead of the ranking
            alone. The curves need a validation pass per epoch; the ranking is the same either way.

    Every argument, every label and every modality's model and optimizer are checked before the first
    model trains (each factory is called once ahead for that, with the first seed).
    """
    call = check_rank_unimodal_call(
        factories,
        train,
        val,
        epochs=epochs,
        subset=subset,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        seeds=seeds,
        metric=metric,
        n_bootstrap=n_bootstrap,
        warn_margin=warn_margin,
        progress=progress,
        return_details=return_details,
        examples=EXAMPLES,
    )
    recipe = _recipe(optimizer, lr, weight_decay)
    arrays = {
        name: (*_as_arrays(train[name], where=f"train[{name!r}]"), *_as_arrays(val[name], where=f"val[{name!r}]"))
        for name in call.names
    }
    val_labels = {name: arrays[name][3] for name in call.names}
    call.check_paired(val_labels)
    built = [_preflight(name, factories[name], arrays[name], recipe, call.seeds[0]) for name in call.names]
    budget = dict(recipe.budget)
    if not isinstance(optimizer, str):
        # A factory's settings are only known once it has built an optimizer: record what it built.
        budget |= _optimizer_budget(built[0])
        if not recipe.passes_lr:
            # Keras keeps the learning rate in float32: compare at that precision.
            warn_unused_lr(lr, budget["lr"], takes_lr="f(lr)", rel_tol=1e-6)
    del built
    verbose = 1 if call.progress else 0

    def train_one(training_seed: int, name: str, description: str) -> TrainedUnimodal:
        x_train, y_train, x_val, y_val = arrays[name]
        n_subset = max(1, round(subset * len(y_train)))
        chosen = np.random.default_rng(training_seed).permutation(len(y_train))[:n_subset]
        model = _make_model(factories, name, training_seed)
        model.compile(
            optimizer=recipe.make_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if call.progress:
            print(f"{description}: {n_subset} samples, {call.epochs} epoch(s)")
        rates = _LearningRates()
        history = model.fit(
            x_train[chosen],
            y_train[chosen],
            epochs=call.epochs,
            batch_size=call.batch_size,
            verbose=verbose,
            validation_data=(x_val, y_val) if call.return_details else None,
            callbacks=[rates],
        )
        output = model.predict(x_val, batch_size=call.batch_size, verbose=verbose)
        curve = _curve(history.history, rates.values) if call.return_details else None
        return output, model, curve, n_subset

    return call.run(train_one, val_labels, backend="keras", recipe=budget)


class _LearningRates(keras.callbacks.Callback):
    """The optimizer's learning rate at each epoch's first step (a schedule's value there)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.values.append(float(str(np.float32(np.asarray(self.model.optimizer.learning_rate)))))  # as in the budget


def _curve(history: Mapping[str, Sequence[float]], rates: Sequence[float]) -> TrainingCurve:
    return TrainingCurve(
        train_loss=tuple(float(v) for v in history["loss"]),
        train_accuracy=tuple(float(v) for v in history["accuracy"]),
        val_loss=tuple(float(v) for v in history["val_loss"]),
        val_accuracy=tuple(float(v) for v in history["val_accuracy"]),
        lr=tuple(rates),
    )


def _recipe(optimizer: Any, lr: float | None, weight_decay: Any) -> _Recipe:
    """Check the optimizer, learning rate and weight decay together; nothing is built yet."""
    budget, options = check_optimizer_choice(optimizer, lr, weight_decay, known=OPTIMIZERS, examples=EXAMPLES)
    if isinstance(optimizer, str):
        named, rate = OPTIMIZERS[optimizer], budget["lr"]
        return _Recipe(make_optimizer=lambda: named(rate, **options), budget=budget, passes_lr=True)
    factory = optimizer
    takes_lr = factory_passes_lr(factory, lr, position=0)
    make = (lambda: factory(lr)) if takes_lr else (lambda: factory())
    return _Recipe(make_optimizer=make, budget=budget, passes_lr=takes_lr)


def _optimizer_budget(opt: keras.optimizers.Optimizer) -> dict[str, Any]:
    """What a factory's optimizer is: class, initial learning rate (and schedule), weight decay."""
    target = getattr(opt, "inner_optimizer", opt)  # a LossScaleOptimizer's settings are its inner one's
    # The shortest decimal that is this float32 (0.1, not 0.10000000149011612): Keras stores rates in float32.
    rate = float(str(np.float32(np.asarray(target.learning_rate))))
    budget: dict[str, Any] = {"optimizer_class": type(opt).__name__, "lr": rate}
    # Keras exposes the schedule object only as this attribute; the value above is its initial rate.
    schedule = getattr(target, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        budget["lr_schedule"] = type(schedule).__name__
    decay = getattr(target, "weight_decay", None)  # None: no decay, which torch records as 0.0
    budget["weight_decay"] = float(str(np.float32(decay))) if isinstance(decay, (int, float)) else 0.0
    return budget


def _preflight(
    name: str,
    factory: Callable[[], keras.Model],
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    recipe: _Recipe,
    seed: int,
) -> keras.optimizers.Optimizer:
    """Build one model and its optimizer and score one sample, so that a bad factory, optimizer or label
    fails before any model trains; trains nothing. Returns the optimizer (its settings go into the budget)."""
    x_train, y_train, _, y_val = arrays
    model = _make_model({name: factory}, name, seed)
    opt = recipe.make_optimizer()
    if not isinstance(opt, keras.optimizers.Optimizer):
        raise TypeError(
            f"the optimizer factory returned {type(opt).__name__} {opt!r} for {name!r}; it must return a Keras "
            "optimizer, e.g. lambda: keras.optimizers.SGD(1e-2, momentum=0.9)"
        )
    if recipe.make_optimizer() is opt:
        raise ValueError(
            "the optimizer factory returned the same optimizer object twice; a Keras optimizer is bound to the "
            "model it first trains, so build a new one per call: lambda: keras.optimizers.SGD(1e-2, momentum=0.9)"
        )
    classes = _output_width(model, x_train)
    check_labels(y_train, num_classes=classes, name=f"train[{name!r}] labels")
    check_labels(y_val, num_classes=classes, name=f"val[{name!r}] labels")
    return opt


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
    if len(y) == 0:
        raise ValueError(f"{where} is empty; give at least one sample")
    return x, y


__all__ = ["rank_unimodal"]
