"""The API reference documents every exported name (reads files only; the build itself is ``nox -s docs``).

Each page under docs/api/ lists objects as mkdocstrings blocks (``::: pdmp.PDMP``); a name added to an
``__all__`` without a block would silently be missing from the reference.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
# Module (as users import it) -> the file whose __all__ it exports.
EXPORTS = {
    "pdmp": ROOT / "pdmp" / "__init__.py",
    "pdmp.datasets": ROOT / "pdmp" / "datasets" / "__init__.py",
    "pdmp.backends.torch": ROOT / "backends" / "torch" / "__init__.py",
}


def _all_of(path: Path) -> list[str]:
    """``__all__`` of a module, including ``__all__ += [...]`` lines, read without importing it."""
    names: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
                names += ast.literal_eval(node.value)
    return names


def _documented() -> set[str]:
    """Every identifier of a ``::: identifier`` block, and every ``heading:`` a block is shown under."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in sorted(API.glob("*.md")))
    blocks = set(re.findall(r"^::: *(\S+)", text, flags=re.MULTILINE))
    headings = set(re.findall(r"^ +heading: *\"([^\"]+)\"", text, flags=re.MULTILINE))
    return blocks | headings


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_every_exported_name_has_a_block_in_the_api_reference(module: str):
    names = [name for name in _all_of(EXPORTS[module]) if not name.startswith("__")]
    assert names, f"{EXPORTS[module]} has no __all__"
    documented = _documented()
    missing = [name for name in names if f"{module}.{name}" not in documented]
    assert not missing, f"add a '::: {module}.<name>' block to a page under docs/api/ for: {missing}"


def test_the_lazily_imported_lightning_callback_is_documented():
    # Not in pdmp.backends.torch.__all__ (a star import must not need lightning), but public.
    assert "pdmp.backends.torch.lightning.PDMPCallback" in _documented()


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [page.name for page in sorted(API.glob("*.md")) if f"api/{page.name}" not in nav]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"
