"""The README's PyTorch quick start (the block tagged ``readme-test: torch``), executed as written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from readme_blocks import readme_blocks

(QUICKSTART,) = readme_blocks("torch")


def test_quickstart_runs_and_does_what_it_says(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(QUICKSTART, "README quick start", "exec"), namespace)
    ranking = namespace["ranking"]
    assert ranking.dominant == "audio"  # type: ignore[attr-defined]
    saved = json.loads((tmp_path / "ranking.json").read_text())
    assert saved["order"] == ["audio", "image"] and saved["budget"]["subset"] == 0.5
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "0 {'audio': 1.0, 'image': 1.0}"  # warm-up epoch
    assert out[2] == "1 {'audio': 10.0, 'image': 0.5}"
    assert namespace["mod"].step_count == 24 and not namespace["mod"].active  # type: ignore[attr-defined]
