"""Workaround for running PyTorch and TensorFlow in one process (parity tests, mixed projects).

Importing ``triton`` (which ``torch._dynamo`` pulls in lazily, e.g. on the first ``torch.optim``
optimizer) *after* TensorFlow has loaded segfaults in this environment (torch 2.14 / TF 2.21, seen
on x86_64 Linux); importing it *before* TensorFlow is fine. So when triton is installed and TensorFlow
is not loaded yet, load triton first. Costs nothing where triton is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def load_triton_before_tensorflow() -> bool:
    """Import triton if it is installed and TensorFlow is not yet loaded; return whether it did."""
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    importlib.import_module("triton")
    return True
