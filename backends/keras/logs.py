"""PDMP's numbers in Keras's ``logs``: :class:`PDMPLogger`, so History, CSVLogger and TensorBoard show them.

The keys are those of :func:`pdmp.backends.torch.training_log` and the Lightning callback:
``pdmp/coef_<modality>`` and ``pdmp/share_<modality>`` (one group in TensorBoard).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from pdmp.backends.keras.model import ModulatedModel
from pdmp.diagnostics import shares

#: Key prefix of every logged value (``pdmp/coef_audio``, ``pdmp/share_audio``), as in the torch adapter.
PREFIX = "pdmp/"


class PDMPLogger(keras.callbacks.Callback):
    """Adds each modality's coefficient and dependency share to the epoch's ``logs`` during ``fit()``.

    At the end of every epoch, ``logs`` gains:

    * ``pdmp/coef_<m>``: modality m's coefficient, the mean over the epoch's steps of the coefficient
      each step trained with;
    * ``pdmp/share_<m>``, when the model has ``modality_logits`` (always for OGM-GE and
      ``AdaptivePDMP``): m's dependency share over the epoch's training batches, the softmax mass m's
      logits put on the true class summed over the epoch (in training mode, before each step's update,
      summed over replicas) over that sum across modalities (:func:`pdmp.dependency`'s share).

    Usage: ``model.fit(..., callbacks=[PDMPLogger(), keras.callbacks.CSVLogger("log.csv")])``;
    :meth:`ModulatedModel.fit` runs it before the other callbacks, so their order does not matter.
    It reads two small variables after every batch (with ``steps_per_execution > 1``: after every
    execution, so the means are over executions).
    """

    def __init__(self) -> None:
        super().__init__()
        self._coefficients: np.ndarray | None = None
        self._scores: np.ndarray | None = None
        self._steps = 0

    def on_train_begin(self, logs: Any = None) -> None:
        if not isinstance(self.model, ModulatedModel):
            raise TypeError(
                f"PDMPLogger logs a ModulatedModel's coefficients, but fit() runs a {type(self.model).__name__}; "
                "wrap the model: ModulatedModel(model, modalities, policy)"
            )

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._coefficients, self._scores, self._steps = None, None, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        model = self.model
        # Read after the step: OGM-GE writes its coefficients during the step, the others before it.
        coefficients = np.asarray(model.pdmp_coefficients.numpy(), dtype=np.float64)
        self._coefficients = coefficients if self._coefficients is None else self._coefficients + coefficients
        if model._logits.value is not None:
            scores = np.asarray(model.pdmp_scores.numpy(), dtype=np.float64)
            self._scores = scores if self._scores is None else self._scores + scores
        self._steps += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is None or self._coefficients is None or self._steps == 0:
            return
        names = self.model.modalities
        mean = self._coefficients / self._steps
        logs.update({f"{PREFIX}coef_{name}": float(value) for name, value in zip(names, mean, strict=True)})
        if self._scores is not None:
            share = shares({name: float(value) for name, value in zip(names, self._scores, strict=True)})
            logs.update({f"{PREFIX}share_{name}": share[name] for name in names})


__all__ = ["PREFIX", "PDMPLogger"]
