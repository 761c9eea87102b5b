"""A :class:`pdmp.transforms.GradientPolicy` in the Keras step: its inputs and its formula in ``keras.ops``.

The core is the single implementation of every policy: :meth:`GradientPolicy.transform` runs once per
step on the host (:func:`host_transform`, called from the graph through the backend's ``host_call``:
``tf.numpy_function`` or ``jax.pure_callback``). What runs in the graph is generic and mirrors the
NumPy references of :mod:`pdmp.transforms` term for term (``tests/test_keras_transforms.py`` checks
them against each other):

* :func:`logit_statistics`: :func:`pdmp.transforms.logit_statistics` of per-modality logits;
* :func:`gradient_statistics`: :func:`pdmp.transforms.gradient_statistics` of one modality's G and U;
* :func:`transformed`: :func:`pdmp.transforms.apply_transform`, with the step's transform read from a
  tensor (so nothing is decided at trace time, and the step never retraces).

The policy's state crosses the host call as the encoded vector of ``_policy_state``: the callback
loads it, calls ``transform`` and returns the new state, which the graph writes back into the
``pdmp_policy_state`` variable. So the callback depends on its inputs only, and whatever restores the
model's variables restores the policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from pdmp.backends.keras import _ogm, _policy_state
from pdmp.transforms import (
    GRADIENT_STATISTICS,
    LOGIT_STATISTICS,
    TRANSFORM_FIELDS,
    GradientPolicy,
    GradientTransform,
    stats_from_array,
)

# The formula below indexes the transform's columns and the statistics' rows by position.
_FUSED, _UNIMODAL, _ANCHOR, _MAGNITUDE, _FLOOR = range(5)
assert TRANSFORM_FIELDS == ("fused", "unimodal", "anchor", "magnitude", "floor_to_sum")
assert LOGIT_STATISTICS == ("count", "true_prob", "cross_entropy", "entropy", "logit_abs")
assert GRADIENT_STATISTICS == ("fused_sq", "unimodal_sq", "dot", "fisher")


def class_indices(labels: Any, logits: Any, who: str) -> Any:
    """``labels`` as int32 class indices, checked in the graph against the logits' width (see ``_ogm``)."""
    return _ogm.class_indices(labels, logits, who=who)


def logit_statistics(logits: Sequence[Any], labels: Any, *, dtype: str, who: str = "GradientPolicy") -> Any:
    """:data:`~pdmp.transforms.LOGIT_STATISTICS` of each modality's logits (batch sums), shape ``(M, 5)``.

    The twin of :func:`pdmp.transforms.logit_statistics`, in ``dtype`` (float64 where the backend has
    it): a stable log-softmax, the true class's softmax mass and cross-entropy, the softmax's entropy
    and the logits' absolute sum. Not differentiated (the logits are cut off the gradient).
    """
    y = class_indices(labels, logits[0], who)[:, None]
    rows = []
    for out in logits:
        values = ops.cast(ops.stop_gradient(ops.convert_to_tensor(out)), dtype)
        shifted = values - ops.max(values, axis=-1, keepdims=True)
        log_prob = shifted - ops.log(ops.sum(ops.exp(shifted), axis=-1, keepdims=True))
        probs = ops.exp(log_prob)
        count = ops.cast(ops.shape(values)[0], dtype)
        rows.append(
            ops.stack(
                [
                    count,
                    ops.sum(ops.take_along_axis(probs, y, axis=-1)),
                    -ops.sum(ops.take_along_axis(log_prob, y, axis=-1)),
                    -ops.sum(probs * log_prob),
                    ops.sum(ops.abs(values)),
                ]
            )
        )
    return ops.stack(rows)


def _sum_sq(tensors: Sequence[Any], dtype: str) -> Any:
    return sum((ops.sum(ops.square(ops.cast(t, dtype))) for t in tensors), ops.zeros((), dtype))


def gradient_statistics(fused: Sequence[Any], unimodal: Sequence[Any] | None, *, dtype: str) -> Any:
    """:data:`~pdmp.transforms.GRADIENT_STATISTICS` of one modality, shape ``(4,)`` (accumulated in ``dtype``).

    The twin of :func:`pdmp.transforms.gradient_statistics`: ``fisher`` sums ``mean(G^2)`` over the
    tensors with two or more dimensions (kernels; not biases or norm scales).
    """
    zero = ops.zeros((), dtype)
    weights = [t for t in fused if len(t.shape) >= 2 and all(d != 0 for d in t.shape)]  # None: unknown, not empty
    fisher = sum((ops.mean(ops.square(ops.cast(t, dtype))) for t in weights), zero)
    if unimodal is None:
        return ops.stack([_sum_sq(fused, dtype), zero, zero, fisher])
    dot = sum((ops.sum(ops.cast(g, dtype) * ops.cast(u, dtype)) for g, u in zip(fused, unimodal, strict=True)), zero)
    return ops.stack([_sum_sq(fused, dtype), _sum_sq(unimodal, dtype), dot, fisher])


def transformed(
    row: Any,
    fused: Sequence[Any],
    plain: Sequence[Any],
    unimodal: Sequence[Any] | None,
    params: Sequence[Any] | None,
    anchors: Sequence[Any] | None,
) -> list[Any]:
    """``magnitude * floor(fused * G + unimodal * U) + anchor * (theta - theta*)`` for each tensor.

    ``row`` is the modality's row of :meth:`GradientTransform.as_array` (a tensor); ``plain`` is
    ``G + U`` (the gradient of everything backpropagated), whose norm the floor raises ``c`` to.
    ``params``/``anchors`` are given only for policies that pull towards an anchor.
    """
    result = []
    for index, g in enumerate(fused):
        dtype = g.dtype
        a, b, c, magnitude, floor = (ops.cast(row[i], dtype) for i in (_FUSED, _UNIMODAL, _ANCHOR, _MAGNITUDE, _FLOOR))
        combined = a * g if unimodal is None else a * g + b * unimodal[index]
        norm = ops.sqrt(ops.sum(ops.square(combined)))
        plain_norm = ops.sqrt(ops.sum(ops.square(plain[index])))
        # c = 0 stays 0 (the reference's division by a zero norm is the NaN the core departs from).
        raise_to = ops.where(norm > 0, ops.maximum(plain_norm / ops.where(norm > 0, norm, 1.0), 1.0), 1.0)
        combined = combined * ops.where(floor > 0, raise_to, ops.ones_like(raise_to))
        out = magnitude * combined
        if params is not None and anchors is not None:
            theta = ops.cast(ops.convert_to_tensor(params[index]), dtype)
            out = out + c * (theta - ops.cast(ops.convert_to_tensor(anchors[index]), dtype))
        result.append(out)
    return result


def host_transform(
    policy: GradientPolicy, layout: _policy_state.StateLayout, wide_float: str
) -> Callable[[Any, Any, Any, Any, Any, Any], tuple[np.ndarray, np.ndarray]]:
    """The host side of the step: ``(step, epoch, take, logit_stats, gradient_stats, state) -> (transform, state)``.

    ``state`` is the policy's encoded state (``_policy_state.pack``); where ``take`` is nonzero (the
    optimizer will take this step) the function loads it into ``policy``, calls
    :meth:`~pdmp.transforms.GradientPolicy.transform` once and returns the transform matrix
    (``wide_float``) and the new encoded state. Where ``take`` is 0 (a micro-batch that only accumulates,
    a step a ``LossScaleOptimizer`` skips) the policy is not called: its state comes back unchanged with
    the identity transform, whose statistics (possibly non-finite) nobody reads. A lock keeps replicas of
    a ``tf.distribute`` step (which call it with the same inputs) from interleaving;
    ``policy.last_transform`` is the last taken step's.
    """
    lock = threading.Lock()
    modalities = policy.modalities
    identity = GradientTransform(fused={}).as_array(modalities).astype(wide_float)

    def run(
        step: Any, epoch: Any, take: Any, logit_stats: Any, gradient_stats: Any, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        state = np.asarray(state)
        if not int(np.asarray(take)):
            return identity, state
        with lock:
            if layout.size:
                policy.load_state_dict(layout.decode(_policy_state.unpack(state)))
            result = policy.transform(
                step=int(np.asarray(step)),
                epoch=int(np.asarray(epoch)),
                logit_stats=(
                    stats_from_array(logit_stats, modalities, LOGIT_STATISTICS) if policy.uses_logits else None
                ),
                gradient_stats=(
                    stats_from_array(gradient_stats, modalities, GRADIENT_STATISTICS)
                    if policy.uses_gradient_stats
                    else None
                ),
            )
            new_state = _policy_state.pack(layout.encode(policy.state_dict()), wide_float) if layout.size else state
        return result.as_array(modalities).astype(wide_float), np.asarray(new_state, dtype=state.dtype)

    return run


def unimodal_loss(logits: Any, labels: Any) -> Any:
    """A modality's unimodal loss: the mean sparse categorical cross-entropy of its logits (from logits)."""
    y = class_indices(labels, logits, "unimodal loss")
    values = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    # A sum over the count, not ops.mean: Keras 3.15's ops.mean on JAX averages float64 in float32
    # (its result_type("float64", "float32") is float32), ~1e-8 off, which the gradient carries.
    return ops.sum(values) / ops.cast(ops.shape(values)[0], values.dtype)
