"""MkDocs hook: lay the sources out as they are installed, so the API reference reads ``pdmp.backends.*``.

The repository keeps the adapters in ``backends/`` and pyproject.toml maps them to ``pdmp.backends``;
griffe (which reads the source for mkdocstrings, without importing it) follows folders, not that mapping.
This hook copies ``pdmp/`` and ``backends/`` (as ``pdmp/backends``) into a temporary folder outside the
repository and points mkdocstrings at it, so headings, cross-references and "Source code in" paths all
read as users import them (``pdmp.backends.torch.Modulator``, ``pdmp/backends/torch/modulator.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
_staged: list[Path] = []


def _stage(root: Path) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="pdmp-docs-src-"))
    shutil.copytree(root / "pdmp", folder / "pdmp", ignore=_IGNORE)
    if (folder / "pdmp" / "backends").exists():
        raise RuntimeError("pdmp/backends exists in the source tree; the docs hook expects it only in backends/")
    shutil.copytree(root / "backends", folder / "pdmp" / "backends", ignore=_IGNORE)
    _staged.append(folder)
    return folder


@event_priority(100)  # before mkdocstrings' on_config, which creates the handler with these paths
def on_config(config: Any) -> Any:
    root = Path(config.config_file_path).parent
    folder = _stage(root)
    python = config.plugins["mkdocstrings"].config.handlers["python"]
    python["paths"] = [str(folder)]
    return config


def on_shutdown() -> None:
    while _staged:
        shutil.rmtree(_staged.pop(), ignore_errors=True)
