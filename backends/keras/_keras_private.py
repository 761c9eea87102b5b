"""The few Keras internals the adapter relies on, reached in one place (with the backends' trainers).

``ModulatedModel.train_step`` must behave like Keras's own so that the ``loss`` shown by ``fit()`` and
user overrides of ``compute_loss`` keep working; the TensorFlow step uses ``Trainer._compute_loss``
(which tolerates ``compute_loss`` overrides without a ``training`` argument), ``Trainer._loss_tracker``
and ``unscale_loss_for_distribution`` (Keras >= 3.8, hence the lower bound in ``pyproject.toml``); the
JAX step uses ``JAXTrainer.compute_loss_and_updates`` and ``_update_metrics_variables``, as Keras's own
JAX ``train_step`` does (``tensorflow/trainer.py``, ``jax/trainer.py``). Checking a model's structure
(which layer is the head, what a ``ConcatHead`` concatenates) reads the functional graph:
``KerasTensor._keras_history`` and ``Operation._inbound_nodes``. If a Keras release moves them, only
these files change.
"""

from __future__ import annotations

from typing import Any

import keras
from keras.src.ops.operation import Operation


def output_in_caller(layer: keras.layers.Layer) -> Any:
    """The tensor ``layer`` produced where the enclosing functional model called it.

    ``layer.output`` gives that for plain layers, but a nested functional model overrides ``output``
    with its *own* inner output, which is not connected to the enclosing model's inputs; the generic
    ``Operation.output`` reads the call node instead (first call, like ``output``).
    """
    generic_output: property = Operation.__dict__["output"]
    return generic_output.fget(layer)  # type: ignore[misc]


def producing_layer(tensor: Any) -> Any:
    """The layer (operation) whose call produced symbolic ``tensor``, or None for a model input."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history[0]


def inbound_tensors(layer: Any) -> list[Any]:
    """The symbolic tensors ``layer`` was first called on ([] for an input layer or an uncalled one)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    return list(nodes[0].input_tensors) if nodes else []


def micro_batch_counter(optimizer: Any) -> Any:
    """The variable counting every ``apply`` of the optimizer that updates the weights or accumulates (a
    ``LossScaleOptimizer``'s inner optimizer's: a skipped step reaches neither). Under
    ``gradient_accumulation_steps`` the public ``iterations`` is this count floor-divided by the steps, a
    tensor computed when it is read, so it cannot tell what one ``apply`` changed."""
    return getattr(optimizer, "inner_optimizer", optimizer)._iterations


def accumulation_steps(optimizer: Any) -> int | None:
    """The optimizer's ``gradient_accumulation_steps`` (its inner optimizer's under a ``LossScaleOptimizer``,
    which accumulates after unscaling), None without accumulation."""
    steps = getattr(getattr(optimizer, "inner_optimizer", optimizer), "gradient_accumulation_steps", None)
    return int(steps) if steps else None


def accumulated_gradient(optimizer: Any, variable: Any) -> Any:
    """What the optimizer has accumulated for ``variable`` since its last update (unscaled by the loss scale):
    the sum of this step's earlier micro-batches' gradients."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner._accumulated_gradients[inner._get_variable_index(variable)]
