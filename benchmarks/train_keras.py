"""One benchmark run in Keras 3 on TensorFlow, mirroring :mod:`benchmarks.train_torch`.

Same protocol: same seeds and data order per method (a NumPy generator seeded by the seed), SGD with
momentum 0.9 (or AdamW) and cosine decay over all steps, metrics every epoch, the method's policy applied by
:class:`pdmp.backends.keras.ModulatedModel`. One documented difference: Keras's SGD weight decay is
decoupled (``w -= lr * wd * w``), torch's is L2 added to the gradient.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pdmp import CoefficientPolicy
from pdmp.backends.keras import ConcatHead, ModulatedModel

import keras  # isort: skip  (after the adapter, which loads triton before TensorFlow)

from benchmarks.models_keras import fusion_model
from benchmarks.protocol import TrainConfig, is_new_best, modulation_mode, split_metrics, summarise


def _channels_last(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def _inputs(split: Any, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: _channels_last(np.asarray(split.inputs[name])) for name in modalities}


def _logits(
    model: keras.Model, encoders: dict[str, str], inputs: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Fused logits and per-modality decomposed logits (``f_u W_u + b / M``) of the concat head."""
    features = {
        name: np.concatenate(
            [
                np.asarray(model.get_layer(layer)(inputs[name][i : i + 512], training=False), dtype=np.float64)
                for i in range(0, len(inputs[name]), 512)
            ]
        )
        for name, layer in encoders.items()
    }
    kernel, bias = (np.asarray(v, dtype=np.float64) for v in model.get_layer("head").get_weights())
    blocks = np.split(kernel, np.cumsum([f.shape[1] for f in features.values()])[:-1], axis=0)
    parts = {name: f @ w + bias / len(features) for (name, f), w in zip(features.items(), blocks, strict=True)}
    fused = sum(parts.values())
    return np.asarray(fused), (parts if len(parts) > 1 else None)


class _CoefficientLog(keras.callbacks.Callback):
    def __init__(self, model: ModulatedModel) -> None:
        super().__init__()
        self.owner, self.sums, self.steps = model, dict.fromkeys(model.modalities, 0.0), 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        for name, value in self.owner.coefficients.items():
            self.sums[name] += value
        self.steps += 1

    def mean(self) -> dict[str, float]:
        means = {name: total / max(self.steps, 1) for name, total in self.sums.items()}
        self.sums, self.steps = dict.fromkeys(self.sums, 0.0), 0
        return means


def train_run(
    dataset: Any,
    modalities: Sequence[str],
    config: TrainConfig,
    seed: int,
    *,
    policy: CoefficientPolicy | None = None,
    lr_scale: float = 1.0,
    progress: Any = None,
) -> dict[str, Any]:
    keras.utils.set_random_seed(seed)
    train_x, val_x, test_x = (_inputs(split, modalities) for split in (dataset.train, dataset.val, dataset.test))
    train_y = np.asarray(dataset.train.labels)
    shapes = {name: array.shape[1:] for name, array in train_x.items()}
    kinds = {name: config.encoder_for(name) for name in modalities}
    model, encoders = fusion_model(shapes, kinds, config.width, len(dataset.class_names))
    steps_per_epoch = -(-train_y.shape[0] // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.lr * lr_scale, config.epochs * steps_per_epoch)
    optimizer = make_optimizer(schedule, config)
    trained: keras.Model = model
    log = None
    if policy is not None and len(modalities) > 1:
        logits_spec = ConcatHead("head", dict(encoders)) if policy.needs_logits else None
        mode = modulation_mode(config, policy)
        trained = ModulatedModel(model, dict(encoders), policy, mode=mode, modality_logits=logits_spec, seed=seed)
        log = _CoefficientLog(trained)
    trained.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order_rng = np.random.default_rng(seed)
    history: list[dict[str, Any]] = []
    best_weights: list[np.ndarray] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = order_rng.permutation(train_y.shape[0])
        fitted = trained.fit(
            {name: array[order] for name, array in train_x.items()},
            train_y[order],
            batch_size=config.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
            callbacks=[log] if log is not None else None,
        )
        val_fused, val_parts = _logits(model, encoders, val_x)
        metrics = {"val": split_metrics(np.asarray(dataset.val.labels), val_fused, val_parts)}
        train_fused, _ = _logits(model, encoders, train_x)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(fitted.history["loss"][-1]),
                "train_acc": float(np.mean(train_fused.argmax(1) == train_y)),  # inference mode, after the epoch
                "lr": float(keras.ops.convert_to_numpy(schedule((epoch + 1) * steps_per_epoch))),
                **metrics,
                "coefficients": log.mean() if log is not None else None,
                "elapsed_s": time.perf_counter() - start,
            }
        )
        if is_new_best(history):
            best_weights = model.get_weights()
        if progress is not None:
            progress.set_postfix(epoch=epoch, val=f"{metrics['val']['acc']:.3f}", refresh=False)
    test_labels = np.asarray(dataset.test.labels)
    final_test = split_metrics(test_labels, *_logits(model, encoders, test_x))
    model.set_weights(best_weights)
    best_test = split_metrics(test_labels, *_logits(model, encoders, test_x))
    # The last epoch's validation predictions: the ranking stage ranks unimodal runs by these.
    return summarise(history, start, val_fused.argmax(1), final_test=final_test, best_test=best_test)


def make_optimizer(schedule: Any, config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
