"""Missing or corrupted modalities in Keras (TensorFlow or JAX): the forward passes of :mod:`pdmp.robustness`.

:func:`evaluate_robustness` runs a model over test inputs altered by the core's conditions;
:func:`apply_modality_dropout` replaces the dropped samples' inputs of a training batch (the mask and
the replacement's meaning are the core's, :class:`pdmp.robustness.ModalityDropout`; use it in a custom
``train_step`` or on the arrays a ``tf.data`` map or a generator feeds ``fit()``). What each condition
does, and how dropout meets a policy's coefficients, is documented in :mod:`pdmp.robustness`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from pdmp._validation import check_positive_int
from pdmp.robustness import (
    Condition,
    ModalityDropout,
    RobustnessTable,
    drop_modalities,
    predict_in_batches,
    replacement_value,
)
from pdmp.robustness import evaluate_robustness as _evaluate

__all__ = ["ModalityDropoutData", "apply_modality_dropout", "evaluate_robustness"]


def evaluate_robustness(
    predict: Callable[[dict[str, Any]], Any] | keras.Model,
    inputs: Mapping[str, Any],
    labels: Any,
    *,
    conditions: Sequence[Condition] | None = None,
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_classes: int | None = None,
) -> RobustnessTable:
    """Accuracy and macro-F1 of ``predict`` with each modality missing or noised (one table row per condition).

    Args:
        predict: a ``keras.Model`` taking a dict keyed by modality (called with ``training=False``), or
            ``predict({modality: array}) -> logits`` for one batch.
        inputs, labels: the test inputs keyed by modality (each in the layout the model takes) and the
            integer labels.
        conditions, train_means, tokens, seed: as :func:`pdmp.backends.torch.evaluate_robustness` (the
            same arrays and seed give the same altered inputs in both backends).
        batch_size: the batch size of the forward passes.
    """
    batch_size = check_positive_int(batch_size, name="batch_size")
    model = predict if isinstance(predict, keras.Model) else None

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        logits = model(batch, training=False) if model is not None else predict(batch)
        return np.asarray(ops.convert_to_numpy(logits), dtype=np.float64)

    def run(altered: dict[str, np.ndarray]) -> np.ndarray:
        return predict_in_batches(forward, altered, batch_size)

    def numpy(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return None if values is None else {k: np.asarray(ops.convert_to_numpy(v)) for k, v in values.items()}

    arrays = numpy(inputs)
    assert arrays is not None
    return _evaluate(
        run,
        arrays,
        np.asarray(labels),
        conditions=conditions,
        train_means=numpy(train_means),
        tokens=numpy(tokens),
        seed=seed,
        num_classes=num_classes,
    )


def apply_modality_dropout(
    inputs: Mapping[str, Any],
    mask: Mapping[str, Any],
    *,
    replacement: str = "zeros",
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The batch with each sample's dropped modalities replaced (``mask``: :meth:`ModalityDropout.mask`).

    ``"token"`` keeps the token (e.g. a trainable variable) in the graph, so it learns from the dropped
    samples; modalities the mask leaves out pass unchanged.
    """
    unknown = sorted(set(mask) - set(inputs))
    if unknown:
        raise ValueError(f"the dropout mask names {unknown}, not among the inputs {sorted(inputs)}")
    out = dict(inputs)
    for name, dropped in mask.items():
        x = ops.convert_to_tensor(inputs[name])
        drop = np.asarray(dropped, dtype=bool)
        if drop.shape != (x.shape[0],):
            raise ValueError(f"the dropout mask of {name!r} has shape {drop.shape}; the batch has {x.shape[0]} samples")
        if not drop.any():
            continue
        value = replacement_value(name, replacement, tuple(x.shape[1:]), train_means=train_means, tokens=tokens)
        filled = ops.zeros_like(x) if value is None else ops.cast(value, x.dtype)
        where = ops.convert_to_tensor(drop.reshape((-1,) + (1,) * (len(x.shape) - 1)))
        out[name] = ops.where(where, filled, x)
    return out


class ModalityDropoutData(keras.utils.PyDataset):
    """``(inputs, labels)`` batches for ``fit()`` with modality dropout, so that it composes with any
    model and policy (a :class:`~pdmp.backends.keras.ModulatedModel` included) without a custom step.

    Args:
        x, y: the training inputs keyed by modality (NumPy arrays) and labels.
        dropout: the :class:`pdmp.robustness.ModalityDropout` drawing each batch's mask (its replacement
            is used; ``"mean"`` needs ``train_means``, ``"token"`` a fixed ``tokens`` array; a learned token
            needs :func:`apply_modality_dropout` inside a training step instead).
        batch_size: samples per batch; ``shuffle_seed``: reshuffle every epoch from this seed (None: in order).

    Masks are drawn in the order batches are requested, so keep Keras's default single worker for
    reproducible masks (``workers=1``, ``use_multiprocessing=False``).
    """

    def __init__(
        self,
        x: Mapping[str, Any],
        y: Any,
        dropout: ModalityDropout,
        *,
        batch_size: int = 32,
        shuffle_seed: int | None = None,
        train_means: Mapping[str, Any] | None = None,
        tokens: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(dropout, ModalityDropout):
            raise TypeError(f"dropout must be a pdmp.robustness.ModalityDropout, got {type(dropout).__name__}")
        self.x = {name: np.asarray(value) for name, value in x.items()}
        self.y = np.asarray(y)
        lengths = {name: len(value) for name, value in self.x.items()}
        if any(n != len(self.y) for n in lengths.values()):
            raise ValueError(f"x has {lengths} samples but y has {len(self.y)}; pass the same samples")
        unknown = sorted(set(dropout.modalities) - set(self.x))
        if unknown:
            raise ValueError(f"dropout drops {unknown}, not among the inputs {sorted(self.x)}")
        self.dropout = dropout
        self.batch_size = check_positive_int(batch_size, name="batch_size")
        self.train_means, self.tokens = train_means, tokens
        self._rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self._order = self._rng.permutation(len(self.y)) if self._rng is not None else np.arange(len(self.y))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = {name: value[rows] for name, value in self.x.items()}
        dropped = drop_modalities(
            batch,
            self.dropout.mask(len(rows)),
            replacement=self.dropout.replacement,
            train_means=self.train_means,
            tokens=self.tokens,
        )
        return dropped, self.y[rows]

    def on_epoch_end(self) -> None:
        if self._rng is not None:
            self._order = self._rng.permutation(len(self.y))
