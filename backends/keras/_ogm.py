"""OGM-GE's coefficient formula in ``keras.ops``, so it runs inside a traced/XLA train step on any backend.

This mirrors :class:`pdmp.policies.OGMGE` and :func:`pdmp.diagnostics.modality_scores` term for term
(``tests/test_keras_ogm.py`` checks it against them on TensorFlow, ``tests/test_keras_jax.py`` on JAX);
the core stays the reference. Two unavoidable differences: the coefficients' arithmetic is float32
(the core uses float64), and the floor that keeps ratios finite when a score underflows to 0 is
float32's smallest normal number rather than float64's. The label check is the backend's own
(:mod:`pdmp.backends.keras._backend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from pdmp.backends.keras._backend import backend_module

_TINY = float(np.finfo(np.float32).tiny)
_backend_ops = backend_module("ops")
_LABELS = "{who} labels must be class indices in [0, number of classes); got"


def batch_scores(logits: Sequence[Any], labels: Any, *, dtype: str = "float32") -> Any:
    """``s_u = sum_i softmax(out_u)[i, y_i]`` for each modality, stacked into shape ``(M,)``.

    ``labels`` may be class indices (any shape that flattens to the batch) or one-hot rows. ``dtype``:
    the arithmetic's (the model's adapter asks for float64 where the backend has it, the core's precision).
    """
    labels = class_indices(labels, logits[0])
    scores = []
    for out in logits:
        probabilities = ops.softmax(ops.cast(ops.stop_gradient(out), dtype), axis=-1)
        scores.append(ops.sum(ops.take_along_axis(probabilities, labels[:, None], axis=-1)))
    return ops.stack(scores)


def class_indices(labels: Any, logits: Any, *, who: str = "OGM-GE") -> Any:
    """``labels`` (class indices of any shape that flattens to the batch, or one-hot rows) as int32 indices,
    failing the step when one is outside ``0..classes-1`` (``classes``: the width of ``logits``)."""
    first = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels)
    if labels.ndim is not None and labels.ndim == first.ndim and labels.shape[-1] != 1:
        labels = ops.argmax(labels, axis=-1)  # one-hot / probability targets
    labels = ops.reshape(labels, (-1,))
    if "float" in keras.backend.standardize_dtype(labels.dtype):
        labels = ops.where(ops.isfinite(labels), labels, -1.0)  # NaN/inf: refused as a negative label below
    return _backend_ops.checked_labels(ops.cast(labels, "int32"), ops.shape(first)[-1], _LABELS.format(who=who))


def coefficients(scores: Any, alpha: float) -> Any:
    """``k_u = 1 - tanh(alpha * rho_u)`` where ``rho_u = s_u / mean(s_others) > 1``, else 1."""
    values = ops.maximum(ops.cast(scores, "float32"), _TINY)
    count = ops.cast(values.shape[0], "float32")
    rho = values / ((ops.sum(values) - values) / (count - 1.0))
    # 1 - tanh(x) = 2 / (1 + exp(2x)): no cancellation; exp overflows to inf -> 0 -> floored.
    slowed = ops.maximum(2.0 / (1.0 + ops.exp(2.0 * alpha * rho)), _TINY)
    return ops.where(rho > 1.0, slowed, ops.ones_like(rho))


def sample_std(values: Any) -> Any:
    """The Bessel-corrected standard deviation (``ddof=1``), 0 for a single element.

    OGM-GE's noise scale is ``std(g)`` as the reference code takes it, ``torch.Tensor.std()``, which is
    the sample standard deviation; ``ops.std`` is the population one (smaller by ``sqrt((n - 1) / n)``,
    29% for a 2-element bias). Matches :mod:`pdmp.backends.torch`.
    """
    count = ops.cast(ops.size(values), values.dtype)  # dynamic: a gradient's shape may be unknown when traced
    return ops.std(values) * ops.sqrt(count / ops.maximum(count - 1.0, 1.0))
