"""Extract the README's tested code blocks: a ```python block right after `<!-- readme-test: NAME -->`."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*```python\n(.*?)```", re.DOTALL)


def readme_blocks(name: str) -> list[str]:
    blocks = [code for tag, code in BLOCK.findall(README.read_text(encoding="utf-8")) if tag == name]
    if not blocks:
        raise AssertionError(f"README.md has no block tagged <!-- readme-test: {name} -->")
    return blocks
