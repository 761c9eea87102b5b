"""Extract the tested code blocks of the README and the docs pages.

A block is tested when a ```python block follows `<!-- readme-test: NAME -->`; a test runs it with
``readme_blocks(NAME)``. The same mechanism covers README.md and every page under docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*```python\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(r"^```python\n", re.MULTILINE)


def documented_files() -> list[Path]:
    """README.md and the docs pages (docs/benchmarks/README.md only includes benchmarks/README.md)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def tagged_blocks() -> list[tuple[Path, str, str]]:
    """(file, tag, code) of every tagged block."""
    return [(path, tag, code) for path in documented_files() for tag, code in BLOCK.findall(path.read_text("utf-8"))]


def readme_blocks(name: str) -> list[str]:
    blocks = [code for _, tag, code in tagged_blocks() if tag == name]
    if not blocks:
        raise AssertionError(f"neither README.md nor docs/ has a block tagged <!-- readme-test: {name} -->")
    return blocks
