"""Which Keras backends this adapter runs on, checked once at import, and the code specific to each.

As Keras keeps one folder per backend (``keras/src/backend/<name>/``), the little that differs here
lives in one package per backend, with the same two modules:

* ``<backend>.trainer.ModulatedTrainer``: the ``train_step`` (TensorFlow: ``tf.GradientTape``, stateful;
  JAX: Keras's stateless ``train_step(state, data) -> (logs, state)``) and how Python reads the model's
  variables during ``fit()`` (JAX keeps them out of the variables until it syncs);
* ``<backend>.ops``: the operations ``keras.ops`` does not express the same way on both (replica
  all-reduce, in-graph label checks, stateless noise, sparse gradients, which dtypes exist).

Everything else (policies, schedule, OGM-GE's formula, the lr-mode optimizer hook, saving) is written
once, in ``keras.ops`` where it runs in the step. Keras's torch and numpy backends train through other
machinery (``loss.backward()``, no training at all), so a model built there would silently train
unmodulated: the import refuses them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras

#: Keras backends on which :mod:`pdmp.backends.keras` works.
SUPPORTED_BACKENDS: tuple[str, ...] = ("tensorflow", "jax")


def check_backend() -> str:
    """Return the active Keras backend, or raise ImportError naming it, the supported ones and why."""
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ImportError(
            f"pdmp.backends.keras supports KERAS_BACKEND in {list(SUPPORTED_BACKENDS)}, but Keras is running on "
            f"{backend!r}. The adapter modulates gradients inside Keras's train_step, which it implements for the "
            "TensorFlow (tf.GradientTape) and JAX (stateless step) backends only. Set KERAS_BACKEND=tensorflow or "
            "KERAS_BACKEND=jax before importing keras, or, for PyTorch models, use pdmp.backends.torch."
        )
    return backend


def backend_module(name: str) -> ModuleType:
    """``pdmp.backends.keras.<active backend>.<name>`` (``ops`` or ``trainer``)."""
    return importlib.import_module(f"pdmp.backends.keras.{check_backend()}.{name}")
