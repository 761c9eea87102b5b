"""The README's core example runs as written."""

from __future__ import annotations

import pytest
from readme_blocks import readme_blocks


@pytest.mark.parametrize("code", readme_blocks("core"))
def test_readme_core_example_runs(code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "ranking.json").exists()
