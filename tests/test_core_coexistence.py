"""The torch/TensorFlow coexistence workaround does nothing harmful where neither is installed."""

from __future__ import annotations

import importlib.util
import sys

from pdmp.backends._coexistence import load_triton_before_tensorflow


def test_noop_when_tensorflow_is_loaded_or_triton_absent(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert load_triton_before_tensorflow() is False
    monkeypatch.delitem(sys.modules, "tensorflow")
    if importlib.util.find_spec("triton") is None:
        assert load_triton_before_tensorflow() is False
