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
