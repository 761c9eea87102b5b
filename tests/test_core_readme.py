"""The README's core example runs as written, and every Python block of the README and docs is tested."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from readme_blocks import BLOCK, PYTHON_BLOCK, documented_files, readme_blocks, tagged_blocks

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("code", readme_blocks("core"))
def test_readme_core_example_runs(code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/method.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "ranking.json").exists()


def _tags_run_by_tests() -> set[str]:
    pattern = re.compile(r"readme_blocks\(\"(\w+)\"\)")
    return {tag for path in TESTS.glob("test_*.py") for tag in pattern.findall(path.read_text("utf-8"))}


def test_every_python_block_in_readme_and_docs_is_tagged() -> None:
    for path in documented_files():
        text = path.read_text("utf-8")
        assert len(PYTHON_BLOCK.findall(text)) == len(BLOCK.findall(text)), (
            f"{path.name}: a ```python block without <!-- readme-test: NAME --> before it is never run; "
            "tag it and run it in a test, or show it as ```text"
        )


def test_every_tagged_block_is_run_by_a_test_and_tags_are_unique() -> None:
    tags = [tag for _, tag, _ in tagged_blocks()]
    assert len(tags) == len(set(tags)), f"a tag is used twice: {sorted(tags)}"
    untested = set(tags) - _tags_run_by_tests()
    assert not untested, f"tagged blocks no test runs: {sorted(untested)}"


def test_a_block_without_a_tag_is_caught(tmp_path: Path) -> None:
    page = "<!-- readme-test: a -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    assert len(PYTHON_BLOCK.findall(page)) == 2 and len(BLOCK.findall(page)) == 1
