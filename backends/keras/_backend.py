"""Which Keras backends this adapter runs on, checked once at import.

The adapter's ``train_step`` is written against TensorFlow: ``tf.GradientTape`` for gradients,
``tf.distribute`` replica contexts to all-reduce OGM-GE scores, and the TF optimizer's per-variable
``update_step`` for ``lr`` mode. Keras 3's torch and jax backends run ``train_step`` through
different machinery (``loss.backward()`` / a stateless ``jax.value_and_grad``), so a model built
here would silently train unmodulated there. Refusing at import is safer than that.
"""

from __future__ import annotations

import keras

#: Keras backends on which :mod:`pdmp.backends.keras` works.
SUPPORTED_BACKENDS: tuple[str, ...] = ("tensorflow",)


def check_backend() -> str:
    """Return the active Keras backend, or raise ImportError naming the supported ones and why."""
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ImportError(
            f"pdmp.backends.keras supports KERAS_BACKEND in {list(SUPPORTED_BACKENDS)}, but Keras is running on "
            f"{backend!r}. Its train_step modulates gradients with tf.GradientTape and all-reduces OGM-GE scores "
            "with tf.distribute, which the torch/jax backends do not use. Set KERAS_BACKEND=tensorflow before "
            "importing keras, or, for PyTorch models, use pdmp.backends.torch."
        )
    return backend
