"""What every parity test module does first: load the Keras adapter before TensorFlow starts, skip the
module without torch or TensorFlow, and run both frameworks single-threaded (parity compares op by op)."""

from __future__ import annotations

from typing import Any

import pytest


def parity_frameworks() -> tuple[Any, Any]:
    """``(torch, tensorflow)``, single-threaded; skips the calling module when either is missing."""
    import pdmp.backends.keras  # noqa: F401  (loads triton before TensorFlow; see pdmp.backends._coexistence)

    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    torch.set_num_threads(1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised by another test module
        pass
    return torch, tf
