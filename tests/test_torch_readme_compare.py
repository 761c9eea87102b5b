"""The README's "Does it help on my data?" PyTorch example and its Lightning example, executed as written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from readme_blocks import readme_blocks

(COMPARE,) = readme_blocks("compare_torch")
(LIGHTNING,) = readme_blocks("lightning")


def test_compare_example_runs_search_and_paired_comparison(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(COMPARE, "README compare_torch", "exec"), namespace)
    study = namespace["study"]
    assert study.complete and study.seeds == [0, 1, 2]  # type: ignore[attr-defined]
    names = study.names  # type: ignore[attr-defined]
    assert names[:4] == ["joint", "pdmp", "uniform", "inverse"] and names[-1] == "adaptive"
    search = namespace["search"]
    assert set(search.best) == {"pdmp", "uniform", "inverse", "joint_lr"}  # type: ignore[attr-defined]
    assert all(c.tuned_on == (100,) for c in search.candidates())  # type: ignore[attr-defined]
    table = capsys.readouterr().out
    assert "minus joint [95% paired t-interval]" in table and "| adaptive | 3 |" in table
    saved = json.loads((tmp_path / "study.json").read_text())
    assert len(saved["runs"]) == 3 * len(names)


def test_lightning_example_logs_the_coefficients(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(LIGHTNING, "README lightning", "exec"), namespace)
    logged = {key: float(value) for key, value in namespace["trainer"].logged_metrics.items()}  # type: ignore[attr-defined]
    assert logged["pdmp/coef_audio"] == 10.0 and logged["pdmp/coef_image"] == 0.5
    assert logged["pdmp/share_audio"] + logged["pdmp/share_image"] == pytest.approx(1.0)
    assert logged["pdmp/share_audio"] > 0.5  # the informative modality carries more of the fused model
