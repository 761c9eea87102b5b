"""The setup every Keras test module shares: Keras 3 on TensorFlow, or the importing module is skipped.

Import it before Keras or ``pdmp.backends.keras``: ``from keras_helpers import keras, tf``. It sets
``KERAS_BACKEND=tensorflow`` and quiet TensorFlow logs unless the environment says otherwise (as
``conftest.py`` does), and skips the module that imports it where TensorFlow or Keras is missing or
Keras runs on another backend.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":  # pragma: no cover - the suite's keras session sets it
    pytest.skip("needs KERAS_BACKEND=tensorflow", allow_module_level=True)


def single_threaded() -> None:
    """One TensorFlow thread per op pool, for reproducible reductions; a no-op once TensorFlow has started."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised by another test module
        pass
