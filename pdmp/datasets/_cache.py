"""On-disk cache of built arrays: ``<cache_dir>/<name>-<hash>.npz``, written atomically.

Every cache file carries a SHA-256 of its content (each array's name, dtype, shape and bytes, and the
metadata), checked on every load: a file that is a valid archive but was altered (labels rotated,
NaN images) or was written by a pdmp without checksums raises :class:`DatasetCacheError` instead of
being used. Archives are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import parse_json

__all__ = ["DatasetCacheError", "cache_dir", "config_hash", "content_sha256", "load_npz", "save_npz_atomic"]

ENV_VAR = "PDMP_CACHE_DIR"
_META_KEY = "__meta__"
_CHECKSUM_KEY = "__sha256__"


class DatasetCacheError(ValueError):
    """A dataset cache file is readable but fails its content checksum (altered, or written without one)."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$PDMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdmp``, else ``~/.cache/pdmp``."""
    if override is not None:
        if not isinstance(override, (str, os.PathLike)):
            raise TypeError(
                f"cache_dir must be a folder path (str or pathlib.Path), got {type(override).__name__} {override!r}"
            )
        return Path(override)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pdmp"


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def content_sha256(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    """SHA-256 over every array (sorted by name: name, dtype, shape, C-order bytes) and the metadata JSON."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    digest.update(meta_json.encode())
    return digest.hexdigest()


def save_npz_atomic(
    path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], *, compressed: bool = False
) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a half-written file.

    The archive stores the content checksum :func:`load_npz` verifies. ``compressed`` deflates the
    members (the compact files that travel to other machines; :func:`load_npz` reads both kinds).
    """
    reserved = sorted({_META_KEY, _CHECKSUM_KEY} & set(arrays))
    if reserved:
        raise ValueError(f"array names {reserved} are reserved by the cache format; rename them")
    meta_json = json.dumps(meta, default=str, sort_keys=True)
    checksum = content_sha256(arrays, meta_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            payload: dict[str, Any] = {_META_KEY: np.array(meta_json), _CHECKSUM_KEY: np.array(checksum), **arrays}
            (np.savez_compressed if compressed else np.savez)(fh, **payload)
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
    """The arrays and metadata at ``path``; ``None`` if absent or unreadable (then it is rebuilt).

    Raises :class:`DatasetCacheError` when the file reads but its content checksum is missing (an
    older pdmp wrote it) or does not match (it was altered after it was written).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in (_META_KEY, _CHECKSUM_KEY)}
            meta_json = str(z[_META_KEY])
            stored = str(z[_CHECKSUM_KEY]) if _CHECKSUM_KEY in z.files else None
            # Strict and bounded: a deeply nested or NaN-holding metadata string is unreadable (rebuilt),
            # never a raw RecursionError.
            meta = parse_json(meta_json, source=f"dataset cache {str(path)!r} metadata")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if stored is None:
        raise DatasetCacheError(
            f"dataset cache {str(path)!r} has no content checksum (written by an older pdmp); "
            "delete it to rebuild, or rebuild it with this pdmp where the data can be built and copy it here"
        )
    actual = content_sha256(arrays, meta_json)
    if actual != stored:
        raise DatasetCacheError(
            f"dataset cache {str(path)!r} fails its content checksum (stored {stored[:12]}..., "
            f"content {actual[:12]}...): it was altered after it was written; delete it to rebuild"
        )
    if not isinstance(meta, dict):
        raise DatasetCacheError(f"dataset cache {str(path)!r}: metadata is not a JSON object; delete it to rebuild")
    return arrays, meta
