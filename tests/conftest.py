"""Marks each test module with the backend it needs, by file name, so nox can select per venv.

``test_torch_*`` and ``test_data_*`` (datasets build spectrograms with torchaudio) need torch,
``test_keras_*`` needs Keras on TensorFlow, ``test_parity_*`` needs both, ``test_bench_*`` (the benchmark
pipeline) needs both and the data dependencies; ``test_core_*`` and ``test_probes_core`` need
numpy only and run in the framework-free ``tests-core`` session; the other ``test_probes_*`` files
(bad-input suites) go with their backend.
"""

from __future__ import annotations

import os

import pytest

from pdmp.backends._coexistence import load_triton_before_tensorflow

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test modules import tensorflow directly; torch's triton must load first (see the module).
load_triton_before_tensorflow()

MARKS_BY_PREFIX = {
    "test_torch_": ("torch",),
    "test_data_": ("torch",),
    "test_keras_": ("keras",),
    "test_parity_": ("parity", "torch", "keras"),
    "test_bench_": ("bench",),
    "test_probes_torch": ("torch",),
    "test_probes_datasets": ("torch",),
    "test_probes_keras": ("keras",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for prefix, marks in MARKS_BY_PREFIX.items():
            if item.path.name.startswith(prefix):
                for mark in marks:
                    item.add_marker(getattr(pytest.mark, mark))
