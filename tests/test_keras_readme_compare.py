"""The README's "Does it help on my data?" Keras example, executed as written."""

from __future__ import annotations

import pytest

pytest.importorskip("keras")

from readme_blocks import readme_blocks

(COMPARE,) = readme_blocks("compare_keras")


def test_compare_example_runs_search_and_paired_comparison(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(COMPARE, "README compare_keras", "exec"), namespace)
    study = namespace["study"]
    assert study.complete and study.seeds == [0, 1, 2]  # type: ignore[attr-defined]
    assert study.names[:4] == ["joint", "pdmp", "uniform", "inverse"]  # type: ignore[attr-defined]
    assert len(study.names) == 8  # type: ignore[attr-defined]  # + one choice per family
    table = capsys.readouterr().out
    assert "minus joint [95% paired t-interval]" in table and "| pdmp | 3 |" in table
