"""A benchmark run is a function of (code, configuration, seed, environment).

Two runs of one configuration on a slice of the real data (the smoke preset's 8% of the audio-dominant
regime, 2 epochs, CNN encoders of width 8), in one process and in a fresh process with another hash
seed, at the same torch thread count, give identical numbers: every epoch's training loss, validation
metrics and coefficients, and the final and best-validation test metrics. What is allowed to change
them is recorded with every run (thread counts, torch's CPU kernel level, versions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from benchmarks.protocol import environment  # noqa: E402
from benchmarks.reproduce import fingerprint, first_difference, numbers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["joint", "pdmp", "ogm_ge"])
def test_two_runs_of_one_configuration_in_one_process_are_identical(method: str) -> None:
    first = fingerprint(method=method, seed=1, threads=1)
    second = fingerprint(method=method, seed=1, threads=1)
    assert numbers(first) == numbers(second)
    assert first["environment"]["torch_threads"] == 1
    # Not vacuous: the runs trained (the loss moved) and a modulated run's coefficients left 1.
    losses = [epoch["train_loss"] for epoch in first["history"]]
    assert len(losses) == 2 and losses[0] != losses[1]
    if method == "pdmp":
        assert first["history"][1]["coefficients"]["audio"] == 10.0


def test_another_seed_gives_other_numbers() -> None:
    # The comparison above can fail: a different seed (other initial weights and data order) differs.
    assert numbers(fingerprint(method="joint", seed=1, threads=1)) != numbers(
        fingerprint(method="joint", seed=2, threads=1)
    )


def test_a_fresh_process_with_another_hash_seed_gives_the_same_numbers() -> None:
    here = fingerprint(method="pdmp", seed=1, threads=1)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.reproduce", "--method", "pdmp", "--seed", "1", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    there = json.loads(completed.stdout)
    assert numbers(there) == json.loads(json.dumps(numbers(here)))


def test_the_environment_records_what_changes_the_arithmetic() -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        info = environment()
    finally:
        torch.set_num_threads(previous)
    assert info["torch_threads"] == 1
    assert info["torch_interop_threads"] >= 1
    assert isinstance(info["torch_cpu_capability"], str) and info["torch_cpu_capability"]
    assert {"cpu", "cpu_features", "cpus", "numpy", "frameworks"} <= set(info)


def test_the_environment_records_kernel_selection_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # ATEN_CPU_CAPABILITY=avx2 alone moved the first-epoch loss of the audio-dominant joint run (seed 1)
    # from 2.2191094585 to 2.2187678737 on an AVX-512 machine: a run made under it must say so.
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert environment()["arithmetic_variables"] == {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}


def test_first_difference_names_the_epoch_and_the_environments() -> None:
    mine = {"history": [{"train_loss": 2.0}, {"train_loss": 1.5}], "environment": {"torch_threads": 1}}
    committed = {"history": [{"train_loss": 2.0}, {"train_loss": 1.25}], "environment": {"torch_threads": 2}}
    report = first_difference(mine, committed)
    assert report.startswith("epoch 1: training loss 1.5 here, 1.25 there (relative difference 2.0e-01)")
    assert "torch_threads: 1 here, 2 there" in report
    assert first_difference(mine, mine).startswith("identical training losses over 2 epoch(s)")
