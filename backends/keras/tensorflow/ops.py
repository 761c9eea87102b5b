"""The operations the shared step needs that TensorFlow does its own way (same names in ``jax/ops.py``)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

#: float64 tensors always exist in TensorFlow: coefficients and scores are kept at the core's precision.
FLOAT64 = True


def variable_keys(variable: keras.Variable) -> list[int]:
    """Identities under which the TF optimizer may hand ``variable`` to ``update_step``: the Keras variable,
    its ``tf.Variable``, and under ``tf.distribute`` each replica's component."""
    backing = getattr(variable, "value", variable)
    keys = [id(variable), id(backing)]
    keys.extend(id(component) for component in getattr(backing, "values", ()))
    return keys


def all_reduce_sum(values: tf.Tensor) -> tf.Tensor:
    """Sum over the replicas of a ``tf.distribute`` replica context, so every replica holds the same values."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)
    return values


def checked_labels(labels: tf.Tensor, classes: Any, message: str) -> tf.Tensor:
    """``labels`` (int32 class indices) that fail the step, with ``message``, when one is out of range.

    Out-of-range indices would make the gather fail deep inside TF (CPU) or read zeros (GPU).
    """
    checks = [
        tf.debugging.assert_non_negative(labels, message=f"{message} a negative (or NaN) label"),
        tf.debugging.assert_less(
            labels, tf.cast(classes, labels.dtype), message=f"{message} a label >= the logits' width"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def stateless_normal(shape: Any, seed: int, step: tf.Tensor, position: int) -> tf.Tensor:
    """Float32 standard normal noise determined by (seed, step, position) alone, identical on every replica."""
    counter = tf.cast(step, tf.int64) * 4096 + position
    return tf.random.stateless_normal(shape, seed=tf.stack([tf.cast(seed, tf.int64), counter]))


def densify(gradient: Any) -> Any:
    """A dense gradient (an embedding's ``tf.IndexedSlices`` becomes a tensor)."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def scale_gradient(gradient: Any, k: Any) -> Any:
    """``k * gradient``, keeping a sparse ``tf.IndexedSlices`` sparse."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * k, gradient.indices, gradient.dense_shape)
    return gradient * k


def inside_traced_function() -> bool:
    """Whether this runs inside ``tf.function``, where Python cannot read a tensor's value."""
    return not tf.executing_eagerly()


def update_step_may_be_skipped() -> bool:
    """Whether an optimizer step that is not taken (a skipped loss-scaled step, a gradient-accumulation
    step) calls no ``update_step`` at all: eagerly yes; a traced step traces every branch."""
    return tf.executing_eagerly()


#: ``tf.numpy_function`` (the host call of a GradientPolicy's transform) cannot be XLA-compiled.
HOST_CALL_BLOCKS_XLA = True
#: A GradientPolicy's running sums of an accumulating step live in free variables the step updates in place
#: (not the model's weights: a checkpoint does not carry them).
STEP_SUMS_ARE_WEIGHTS = False


def replica_count() -> int:
    """How many replicas of a ``tf.distribute`` step each compute a part of the batch's gradient (1 without)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def host_call(
    fn: Any, inputs: list[Any], outputs: list[tuple[tuple[int, ...], str]], *, stateful: bool = False
) -> list[tf.Tensor]:
    """``fn(*inputs)`` run by Python on the host in the middle of the step; ``outputs``: each result's
    (shape, dtype). ``tf.numpy_function``, so the train function must not be XLA-compiled; always stateful
    (run once per step, in order), so ``stateful`` changes nothing here."""
    results = tf.numpy_function(fn, inputs, [tf.as_dtype(dtype) for _, dtype in outputs], stateful=True)
    for result, (shape, _) in zip(results, outputs, strict=True):
        result.set_shape(shape)
    return list(results)


def after(values: list[Any], dependency: Any) -> list[Any]:
    """``values`` that exist only once ``dependency`` has run: a step whose host call raises (a refused
    transform) then updates no variable at all, rather than those whose gradients did not need it."""
    with tf.control_dependencies([dependency]):
        return [None if v is None else tf.identity(v) for v in values]
