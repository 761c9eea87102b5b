"""On-disk cache of built arrays: ``<cache_dir>/<name>-<hash>.npz``, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_dir", "config_hash", "load_npz", "save_npz_atomic"]

ENV_VAR = "PDMP_CACHE_DIR"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$PDMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdmp``, else ``~/.cache/pdmp``."""
    if override is not None:
        return Path(override)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pdmp"


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            payload: dict[str, Any] = {"__meta__": np.array(json.dumps(meta, default=str)), **arrays}
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and metadata at ``path``; ``None`` if absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
            meta = json.loads(str(z["__meta__"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
        return None
    return arrays, meta
