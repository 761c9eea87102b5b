"""Missing or corrupted modalities in torch: the forward passes of :mod:`pdmp.robustness`.

:func:`evaluate_robustness` runs a model over test inputs altered by the core's conditions;
:func:`apply_modality_dropout` replaces the dropped samples' inputs of a training batch (the mask and
the replacement's meaning are the core's, :class:`pdmp.robustness.ModalityDropout`). What each
condition does, and how dropout meets a policy's coefficients, is documented in :mod:`pdmp.robustness`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pdmp._validation import check_positive_int
from pdmp.robustness import Condition, RobustnessTable, predict_in_batches, replacement_value
from pdmp.robustness import evaluate_robustness as _evaluate

from ._modes import eval_mode

__all__ = ["apply_modality_dropout", "evaluate_robustness"]


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def evaluate_robustness(
    predict: Callable[[dict[str, torch.Tensor]], torch.Tensor] | nn.Module,
    inputs: Mapping[str, Any],
    labels: Any,
    *,
    conditions: Sequence[Condition] | None = None,
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
) -> RobustnessTable:
    """Accuracy and macro-F1 of ``predict`` with each modality missing or noised (one table row per condition).

    Args:
        predict: ``predict({modality: tensor}) -> logits`` for one batch, e.g. ``lambda x: model(x)[0]``
            for a model returning ``(logits, extras)``; an ``nn.Module`` is called directly and put in
            evaluation mode meanwhile (a function's model is the caller's to put in evaluation mode).
        inputs, labels: the test inputs keyed by modality (tensors or arrays, each modality in the layout
            ``predict`` takes) and the integer labels.
        conditions: :class:`pdmp.robustness.Condition` list (default: each modality missing as zeros and,
            with ``train_means``, as the mean; and noised at 0 and 10 dB).
        train_means, tokens: the ``"mean"`` and ``"token"`` replacements, per modality (tensors or arrays
            broadcasting to one sample).
        seed: the noise's seed (the same noise as Keras's helper for the same arrays).
        batch_size, device: how the altered inputs are fed (``device``: default the module's, else CPU).

    Runs without gradients; the inputs keep their dtype (a float64 model gets float64 inputs).
    """
    batch_size = check_positive_int(batch_size, name="batch_size")
    module = predict if isinstance(predict, nn.Module) else None
    if device is None:
        first = next(module.parameters(), None) if module is not None else None
        device = first.device if first is not None else torch.device("cpu")

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        logits = predict(
            {name: torch.as_tensor(np.ascontiguousarray(value)).to(device) for name, value in batch.items()}
        )
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f"predict returned {type(logits).__name__}; it must return the logits tensor "
                "(for a model returning (logits, ...) pass lambda x: model(x)[0])"
            )
        return logits.detach().double().cpu().numpy()

    def run(altered: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return predict_in_batches(forward, altered, batch_size)

    arrays = {name: _numpy(value) for name, value in inputs.items()}
    with eval_mode([module] if module is not None else []):
        return _evaluate(
            run,
            arrays,
            _numpy(labels),
            conditions=conditions,
            train_means={k: _numpy(v) for k, v in train_means.items()} if train_means is not None else None,
            tokens={k: _numpy(v) for k, v in tokens.items()} if tokens is not None else None,
            seed=seed,
            num_classes=num_classes,
        )


def apply_modality_dropout(
    inputs: Mapping[str, torch.Tensor],
    mask: Mapping[str, Any],
    *,
    replacement: str = "zeros",
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The batch with each sample's dropped modalities replaced (``mask``: :meth:`ModalityDropout.mask`).

    ``"token"`` keeps the token in the graph, so an ``nn.Parameter`` token learns from the dropped
    samples; modalities the mask leaves out pass unchanged. Replacing costs one ``torch.where``.
    """
    unknown = sorted(set(mask) - set(inputs))
    if unknown:
        raise ValueError(f"the dropout mask names {unknown}, not among the inputs {sorted(inputs)}")
    out = dict(inputs)
    for name, dropped in mask.items():
        x = inputs[name]
        drop = torch.as_tensor(np.asarray(dropped, dtype=bool), device=x.device)
        if drop.shape != (x.shape[0],):
            raise ValueError(
                f"the dropout mask of {name!r} has shape {tuple(drop.shape)}; the batch has {x.shape[0]} samples"
            )
        if not bool(drop.any()):
            continue
        value = replacement_value(name, replacement, tuple(x.shape[1:]), train_means=train_means, tokens=tokens)
        filled = torch.zeros_like(x) if value is None else torch.as_tensor(value, device=x.device).to(x.dtype)
        out[name] = torch.where(drop.reshape((-1,) + (1,) * (x.ndim - 1)), filled, x)
    return out
