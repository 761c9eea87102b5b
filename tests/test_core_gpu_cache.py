"""The compact AV-digits files of the GPU benchmark: exact round trip, and every kind of refusal. NumPy only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pdmp.datasets import AV_DIGITS_REGIMES, DatasetCacheError, _cache
from pdmp.datasets._compact import (
    compact_path,
    decode_av_digits,
    encode_av_digits,
    load_compact_av_digits,
)
from pdmp.datasets.av_digits import _rng

SIZES = {"train": 12, "val": 6, "test": 6}


def _full(regime: str, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """Arrays as the builder makes them (its image recipe and noise stream), small shapes."""
    config = AV_DIGITS_REGIMES[regime]
    noise = _rng(seed, "image_noise")
    data = np.random.default_rng(1)
    arrays, clean = {}, {}
    for split, n in SIZES.items():
        u8 = data.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8)
        image = u8.astype(np.float32) / 255.0
        if config.image_noise_std > 0:
            image = image + config.image_noise_std * noise.standard_normal(image.shape, dtype=np.float32)
        clean[split] = u8
        arrays[f"{split}/image"] = image.astype(np.float32)
        arrays[f"{split}/audio"] = data.standard_normal((n, 1, 4, 5)).astype(np.float32) * 2
        arrays[f"{split}/labels"] = np.arange(n, dtype=np.int64) % 10
        arrays[f"{split}/speaker"] = np.arange(n, dtype=np.int64) % 3
        arrays[f"{split}/source_index"] = np.arange(n, dtype=np.int64) * 400
    meta = {"config": config.to_dict(), "seed": seed, "synthesizer": "library", "cache": {"hit": True}}
    return arrays, meta, clean


def _write(folder: Path, regime: str, **options: Any) -> dict[str, np.ndarray]:
    arrays, meta, clean = _full(regime)
    compact, compact_meta = encode_av_digits(arrays, meta, clean_images=clean, **options)
    _cache.save_npz_atomic(compact_path(folder, regime), compact, compact_meta, compressed=True)
    return arrays


@pytest.mark.parametrize(
    ("regime", "encoding"), [("image_dominant", "uint8"), ("audio_dominant", "uint8+seeded_noise")]
)
def test_round_trip_is_exact_for_images_and_float16_for_spectrograms(
    tmp_path: Path, regime: str, encoding: str
) -> None:
    arrays = _write(tmp_path, regime)
    data = load_compact_av_digits(regime, tmp_path)
    assert data.metadata["compact"]["images"]["encoding"] == encoding
    assert data.metadata["cache"]["compact"] is True
    for split in SIZES:
        part = data.split(split)
        assert np.array_equal(part.inputs["image"], arrays[f"{split}/image"])  # bit for bit, noise included
        audio = arrays[f"{split}/audio"]
        assert part.inputs["audio"].dtype == np.float32
        assert np.allclose(part.inputs["audio"], audio, rtol=2**-11, atol=0)
        assert part.labels.dtype == np.int64 and np.array_equal(part.labels, arrays[f"{split}/labels"])
        assert np.array_equal(part.extras["source_index"], arrays[f"{split}/source_index"])
    recorded = data.metadata["compact"]["audio"]["max_abs_error"]
    actual = max(np.abs(data.split(s).inputs["audio"] - arrays[f"{s}/audio"]).max() for s in SIZES)
    assert recorded == pytest.approx(float(actual))


def test_images_that_are_not_uint8_are_refused_or_stored_as_float16() -> None:
    arrays, meta, _ = _full("image_dominant")
    arrays["train/image"] = arrays["train/image"] + np.float32(1e-3)
    with pytest.raises(ValueError, match=r"cannot be rebuilt exactly.*images='float16'"):
        encode_av_digits(arrays, meta)
    compact, compact_meta = encode_av_digits(arrays, meta, images="float16")
    decoded = decode_av_digits(compact, compact_meta, "test")
    error = compact_meta["compact"]["images"]["max_abs_error"]
    assert 0 < error <= 2**-11
    assert max(np.abs(decoded[f"{s}/image"] - arrays[f"{s}/image"]).max() for s in SIZES) == pytest.approx(error)


def test_noisy_regime_needs_the_clean_digits() -> None:
    arrays, meta, _ = _full("under_optimization")
    with pytest.raises(ValueError, match="needs clean_images"):
        encode_av_digits(arrays, meta)


def test_altered_file_fails_its_checksum(tmp_path: Path) -> None:
    _write(tmp_path, "audio_dominant")
    path = compact_path(tmp_path, "audio_dominant")
    with np.load(path, allow_pickle=False) as stored:
        members = {key: stored[key] for key in stored.files}
    members["test/labels"] = np.roll(members["test/labels"], 1)  # same stored checksum, other content
    np.savez_compressed(path, **members)
    with pytest.raises(DatasetCacheError, match="fails its content checksum"):
        load_compact_av_digits("audio_dominant", tmp_path)


def test_rebuilt_images_must_match_the_exported_ones(tmp_path: Path) -> None:
    # A NumPy that draws another noise stream rebuilds other images: refused, with the float16 fix.
    arrays, meta, clean = _full("audio_dominant")
    compact, compact_meta = encode_av_digits(arrays, meta, clean_images=clean)
    compact_meta["compact"]["images"]["float32_sha256"]["val"] = "0" * 64
    _cache.save_npz_atomic(compact_path(tmp_path, "audio_dominant"), compact, compact_meta, compressed=True)
    with pytest.raises(DatasetCacheError, match=r"val images rebuilt here.*--images float16"):
        load_compact_av_digits("audio_dominant", tmp_path)


def test_missing_stale_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetCacheError, match=r"missing or unreadable.*gpu_cache export"):
        load_compact_av_digits("audio_dominant", tmp_path)
    # exported before the regime changed: its config is not the regime's any more
    arrays, meta, clean = _full("audio_dominant")
    meta["config"] = {**meta["config"], "audio_snr_db": 4.0}
    compact, compact_meta = encode_av_digits(arrays, meta, clean_images=clean)
    _cache.save_npz_atomic(compact_path(tmp_path, "audio_dominant"), compact, compact_meta, compressed=True)
    with pytest.raises(DatasetCacheError, match="another config or seed"):
        load_compact_av_digits("audio_dominant", tmp_path)
    # a full cache file under the compact name is not taken for a compact one
    arrays, meta, _ = _full("image_dominant")
    _cache.save_npz_atomic(compact_path(tmp_path, "image_dominant"), arrays, meta)
    with pytest.raises(DatasetCacheError, match="is not a pdmp-av-digits-compact/1 file"):
        load_compact_av_digits("image_dominant", tmp_path)
