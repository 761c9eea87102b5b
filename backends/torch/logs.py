"""The numbers worth logging while a :class:`~pdmp.backends.torch.Modulator` trains: one function.

Hand-written loops call :func:`training_log` and pass the result to their logger (TensorBoard's
``add_scalars``, a CSV writer, ...); :class:`~pdmp.backends.torch.lightning.PDMPCallback` logs the same
dictionary through the LightningModule's logger, so both show the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pdmp._validation import check_same_modalities
from pdmp.diagnostics import dependency

from .modulator import Modulator, _to_numpy

#: Key prefix of every logged value (``pdmp/coef_audio``, ``pdmp/share_audio``): one group in TensorBoard.
PREFIX = "pdmp/"


def training_log(
    modulator: Modulator,
    logits: Mapping[str, torch.Tensor] | None = None,
    labels: torch.Tensor | Any = None,
) -> dict[str, float]:
    """The values to log for this batch: each modality's coefficient and, given logits, its dependency share.

    Args:
        modulator: the :class:`Modulator` training the model; its current coefficients are reported
            (call before :meth:`Modulator.step` to report the coefficients this batch was trained with).
        logits: optional per-modality logits of this batch (e.g. from
            :func:`~pdmp.backends.torch.concat_head_logits`); adds each modality's dependency share, the
            softmax mass its logits put on the true class over the sum across modalities
            (:func:`pdmp.diagnostics.dependency`). Copies the logits to the CPU (one device sync).
        labels: the batch's integer class labels; required with ``logits``.

    Returns:
        ``{"pdmp/coef_<modality>": k_m, ...}`` plus ``{"pdmp/share_<modality>": d_m, ...}`` (shares sum
        to 1) when logits are given; plain floats, ready for any logger.
    """
    if not isinstance(modulator, Modulator):
        raise TypeError(f"training_log needs the Modulator that trains the model, got {type(modulator).__name__}")
    values = {f"{PREFIX}coef_{name}": float(value) for name, value in modulator.coefficients.items()}
    if logits is None:
        if labels is not None:
            raise ValueError("training_log got labels without logits; pass both (for dependency shares) or neither")
        return values
    if labels is None:
        raise ValueError("training_log got logits without labels; pass the batch's labels to compute dependency shares")
    if not isinstance(logits, Mapping):
        raise TypeError(f"training_log logits must be a dict modality -> tensor, got {type(logits).__name__}")
    check_same_modalities(logits.keys(), modulator.policy.modalities, where="training_log logits")
    arrays = {name: _to_numpy(value) for name, value in logits.items()}
    shares = dependency(arrays, _to_numpy(labels)).share
    values.update({f"{PREFIX}share_{name}": shares[name] for name in modulator.policy.modalities})
    return values


__all__ = ["PREFIX", "training_log"]
