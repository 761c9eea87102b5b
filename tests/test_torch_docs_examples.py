"""The docs' torch examples run as written: Lightning's auxiliary-loss example (``lightning_auxiliary``)
and the one-step-for-every-policy example (``training_step_torch``)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

from readme_blocks import readme_blocks

(LIGHTNING_AUXILIARY,) = readme_blocks("lightning_auxiliary")
(TRAINING_STEP,) = readme_blocks("training_step_torch")


def test_lightning_module_reads_the_auxiliary_weights_from_its_callback(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(LIGHTNING_AUXILIARY, "docs/lightning.md", "exec"), namespace)
    largest = namespace["module"].largest  # type: ignore[attr-defined]
    assert largest["audio"] > 0.0  # the rule turned the dominant modality's loss on
    assert largest["image"] == 0.0  # auxiliary_scope="dominant": only the dominant modality's


def test_training_step_example_trains_every_listed_policy(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(TRAINING_STEP, "docs/pytorch.md", "exec"), namespace)
    results = namespace["results"]
    assert set(results) == {"PDMP", "ARL", "MMPareto", "AGM", "Recipe"}  # type: ignore[arg-type]
    assert results["PDMP"] == {"audio": [1.0, 10.0], "image": [0.5, 1.0]}  # type: ignore[index]
    assert results["Recipe"]["audio"] == [1.0, 10.0]  # type: ignore[index]  # the boost after its warm-up
