"""Evaluation mode for a block, each module given back the mode it had."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Every module and submodule in eval mode inside the block; afterwards each one, submodules included,
    is back in its own mode (a submodule the user froze in eval mode inside a training model stays so)."""
    # Parents come before their children, so restoring in this order leaves each child its own mode.
    modes = {module: module.training for root in modules for module in root.modules()}
    try:
        for module in modes:
            module.eval()
        yield
    finally:
        for module, mode in modes.items():
            module.train(mode)
