"""OGM-GE's coefficient formula in TensorFlow ops, so it can run inside a traced/XLA train step.

This mirrors :class:`pdmp.policies.OGMGE` and :func:`pdmp.diagnostics.modality_scores` term for term
(``tests/test_keras_ogm.py`` checks it against them); the core stays the reference. Two unavoidable
differences: the arithmetic is float32 (the core uses float64), and the floor that keeps ratios
finite when a score underflows to 0 is float32's smallest normal number rather than float64's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_TINY = float(np.finfo(np.float32).tiny)


def batch_scores(logits: Sequence[tf.Tensor], labels: tf.Tensor, *, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """``s_u = sum_i softmax(out_u)[i, y_i]`` for each modality, stacked into shape ``(M,)``.

    ``labels`` may be class indices (any shape that flattens to the batch) or one-hot rows. ``dtype``:
    the arithmetic's (the model's adapter asks for float64, the core's precision).
    """
    first = tf.convert_to_tensor(logits[0])
    if labels.shape.rank is not None and labels.shape.rank == first.shape.rank and labels.shape[-1] != 1:
        labels = tf.argmax(labels, axis=-1)  # one-hot / probability targets
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)  # NaN casts to a negative index: caught below
    # Out-of-range indices would make the gather fail deep inside TF (CPU) or read zeros (GPU).
    classes = tf.shape(first)[-1]
    message = "OGM-GE labels must be class indices in [0, number of classes); got"
    checks = [
        tf.debugging.assert_non_negative(labels, message=f"{message} a negative (or NaN) label"),
        tf.debugging.assert_less(labels, classes, message=f"{message} a label >= the logits' width"),
    ]
    with tf.control_dependencies(checks):
        labels = tf.identity(labels)
    scores = []
    for out in logits:
        probabilities = tf.nn.softmax(tf.cast(tf.stop_gradient(out), dtype), axis=-1)
        scores.append(tf.reduce_sum(tf.gather(probabilities, labels, axis=-1, batch_dims=1)))
    return tf.stack(scores)


def coefficients(scores: tf.Tensor, alpha: float) -> tf.Tensor:
    """``k_u = 1 - tanh(alpha * rho_u)`` where ``rho_u = s_u / mean(s_others) > 1``, else 1."""
    values = tf.maximum(tf.cast(scores, tf.float32), _TINY)
    count = tf.cast(tf.size(values), tf.float32)
    rho = values / ((tf.reduce_sum(values) - values) / (count - 1.0))
    # 1 - tanh(x) = 2 / (1 + exp(2x)): no cancellation; exp overflows to inf -> 0 -> floored.
    slowed = tf.maximum(2.0 / (1.0 + tf.exp(2.0 * alpha * rho)), _TINY)
    return tf.where(rho > 1.0, slowed, tf.ones_like(rho))


def sample_std(values: tf.Tensor) -> tf.Tensor:
    """The Bessel-corrected standard deviation (``ddof=1``), 0 for a single element.

    OGM-GE's noise scale is ``std(g)`` as the reference code takes it, ``torch.Tensor.std()``, which is
    the sample standard deviation; ``tf.math.reduce_std`` is the population one (smaller by
    ``sqrt((n - 1) / n)``, 29% for a 2-element bias). Matches :mod:`pdmp.backends.torch`.
    """
    count = tf.cast(tf.size(values), values.dtype)
    return tf.math.reduce_std(values) * tf.sqrt(count / tf.maximum(count - 1.0, 1.0))
