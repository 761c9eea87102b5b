"""The docs' Lightning auxiliary-loss example (tagged ``readme-test: lightning_auxiliary``), run as written."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

from readme_blocks import readme_blocks

(LIGHTNING_AUXILIARY,) = readme_blocks("lightning_auxiliary")


def test_lightning_module_reads_the_auxiliary_weights_from_its_callback(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(LIGHTNING_AUXILIARY, "docs/lightning.md", "exec"), namespace)
    largest = namespace["module"].largest  # type: ignore[attr-defined]
    assert largest["audio"] > 0.0  # the rule turned the dominant modality's loss on
    assert largest["image"] == 0.0  # auxiliary_scope="dominant": only the dominant modality's
