"""Probe suite for the datasets: bad input fails loudly, names the culprit, and writes or reads nothing it should not.

Each probe asserts the error type, that the message names the culprit, and that the folder it ran in
(cache folder or dataset folder) is byte-for-byte unchanged: no cache file, no partial output. The
security probes also spy on every file opened to show that no path outside the dataset root is read.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.torch  # the datasets build spectrograms with torchaudio (as tests/test_data_*)
pytest.importorskip("torchaudio")
PIL = pytest.importorskip("PIL.Image")

from pdmp.datasets import (  # noqa: E402
    CREMAD_CLASSES,
    AVDigitsConfig,
    DatasetFolderError,
    Split,
    load_av_digits,
    load_cremad,
    load_kinetics_sounds,
    torch_loader,
)
from pdmp.datasets._audio import MelConfig, add_noise_at_snr  # noqa: E402

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=160, n_mels=16, f_max=4000.0)
FAST: dict[str, Any] = {"mel": MEL, "audio_seconds": 0.5, "frame_size": (8, 8), "progress": False}


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    result: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            result[key] = "-> " + os.readlink(path)
        elif path.is_file():
            result[key] = path.read_bytes()
    return result


def _write_wav(path: Path, freq: float = 440.0) -> None:
    t = np.arange(2400) / 8000
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes())


def _write_frames(folder: Path, color: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((12, 10, 3), color, np.uint8)).save(folder / "00000.png")


def _cremad(root: Path, per_class_train: int = 4, per_class_test: int = 1) -> Path:
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        rows = []
        for c, code in enumerate(CREMAD_CLASSES):
            for k in range(per):
                name = f"10{c:02d}_{split[:2].upper()}{k}_{code}_XX"
                rows.append(f"{name},{code}")
                _write_wav(root / "AudioWAV" / f"{name}.wav", freq=200 + 100 * c)
                _write_frames(root / "Image-01-FPS" / name, color=20 * c)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A valid CREMA-D folder ``root`` and, beside it, an ``outside`` folder with a WAV and frames."""
    root = _cremad(tmp_path / "root")
    outside = tmp_path / "outside"
    _write_wav(outside / "secret.wav")
    _write_frames(outside / "secret_frames", color=7)
    return root, outside


def _append_row(root: Path, index: str, row: str) -> None:
    with open(root / index, "a") as fh:
        fh.write(row + "\n")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path opened for reading (open, wave.open, PIL.Image.open) during the test, resolved."""
    seen: list[Path] = []
    real_open, real_wave_open, real_image_open = builtins.open, wave.open, PIL.open

    def record(target: Any) -> None:
        if isinstance(target, (str, os.PathLike)):
            seen.append(Path(target).resolve())

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return real_open(file, *args, **kwargs)

    def spy_wave(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return real_wave_open(file, *args, **kwargs)

    def spy_image(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return real_image_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(wave, "open", spy_wave)
    monkeypatch.setattr(PIL, "open", spy_image)
    return seen


# ---- the audio-visual digits: every bad config fails before anything is built or cached -----------------

AV_PROBES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("snr-nan", {"audio_snr_db": float("nan")}, ValueError, r"audio_snr_db must be a finite number"),
    ("snr-inf", {"audio_snr_db": -math.inf}, ValueError, r"audio_snr_db must be a finite number"),
    ("snr-text", {"audio_snr_db": "5"}, TypeError, r"audio_snr_db must be a number"),
    ("image-noise-negative", {"image_noise_std": -0.5}, ValueError, r"image_noise_std must be a finite number >= 0"),
    ("time-shift-above-1", {"time_shift": 2.0}, ValueError, r"time_shift must be in \[0, 1\]"),
    ("fractions-sum", {"split_fractions": (0.5, 0.5, 0.5)}, ValueError, r"split_fractions must sum to 1"),
    ("fractions-negative", {"split_fractions": (1.5, -0.25, -0.25)}, ValueError, r"split_fractions must be a finite"),
    (
        "speakers-zero",
        {"n_speakers": (8, 0, 4)},
        ValueError,
        r"n_speakers \(train, val, test\) must be an integer >= 1",
    ),
    ("speakers-string", {"n_speakers": "844"}, ValueError, r"n_speakers must be three values"),
    ("masks-fraction", {"time_masks": 1.5}, ValueError, r"time_masks must be an integer >= 0"),
    ("n-images-too-few", {"n_images": 3}, ValueError, r"n_images must be an integer >= 10"),
    ("clip-zero", {"clip_seconds": 0.0}, ValueError, r"clip_seconds must be a finite number > 0"),
    ("unknown-field", {"snr": 5.0}, TypeError, r"unknown AVDigitsConfig field\(s\) \['snr'\]"),
    ("seed-negative", {"seed": -1}, ValueError, r"seed must be an integer >= 0"),
    ("seed-fraction", {"seed": 0.5}, ValueError, r"seed must be an integer >= 0"),
    ("use-cache-text", {"use_cache": "no"}, TypeError, r"use_cache must be True or False, got str 'no'"),
    ("regime-typo", {"regime": "imgae_dominant"}, ValueError, r"unknown regime 'imgae_dominant'"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), [p[1:] for p in AV_PROBES], ids=[p[0] for p in AV_PROBES])
def test_av_digits_bad_config_writes_no_cache(tmp_path: Path, overrides, error, message) -> None:
    cache = tmp_path / "cache"
    arguments = {"regime": "image_dominant", "n_speakers": (8, 4, 4), "n_images": 120, **overrides}
    with pytest.raises(error, match=message):
        load_av_digits(cache_dir=str(cache), progress=False, **arguments)
    assert not cache.exists()  # not even the folder


def test_bad_mel_and_snr_helpers_are_refused() -> None:
    with pytest.raises(ValueError, match=r"f_max=20000.0, sample_rate=22050"):
        MelConfig(f_max=20000.0)
    with pytest.raises(ValueError, match=r"mel\.hop_length must be an integer >= 1"):
        MelConfig(hop_length=0)
    with pytest.raises(TypeError, match=r"mel must be a pdmp\.datasets MelConfig"):
        AVDigitsConfig(mel={"n_mels": 40})
    with pytest.raises(ValueError, match="snr_db must be a finite number of dB"):
        add_noise_at_snr(np.ones(4, np.float32), np.ones(4, np.float32), float("nan"), np.ones(4, bool))


# ---- folder datasets: argument checks, path traversal, leaks between splits, empty splits ----------------

FOLDER_PROBES: list[tuple[str, Callable[[Path, Path], Any], type[Exception], str]] = [
    ("val-fraction-1.5", lambda r, o: load_cremad(r, val_fraction=1.5, **FAST), ValueError, r"val_fraction must be"),
    ("n-frames-0", lambda r, o: load_cremad(r, **{**FAST, "n_frames": 0}), ValueError, r"n_frames must be"),
    ("frame-size-1d", lambda r, o: load_cremad(r, **{**FAST, "frame_size": (8,)}), ValueError, r"frame_size must be"),
    ("seconds-nan", lambda r, o: load_cremad(r, **{**FAST, "audio_seconds": math.nan}), ValueError, "audio_seconds"),
    ("audio-dir-up", lambda r, o: load_cremad(r, audio_dir="../outside", **FAST), ValueError, r"audio_dir must be"),
    ("class-names-string", lambda r, o: load_kinetics_sounds(r, class_names="ab", **FAST), TypeError, "class_names"),
    (
        "name-with-dotdot",
        lambda r, o: (_append_row(r, "train.csv", "../outside/secret,NEU"), load_cremad(r, **FAST)),
        DatasetFolderError,
        r"train\.csv.*'\.\./outside/secret'.*path traversal refused",
    ),
    (
        "name-absolute",
        lambda r, o: (_append_row(r, "test.csv", f"{o / 'secret'},HAP"), load_cremad(r, **FAST)),
        DatasetFolderError,
        r"test\.csv.*absolute",
    ),
    (
        "wav-symlink-out",
        lambda r, o: (
            _append_row(r, "train.csv", "linked,SAD"),
            os.symlink(o / "secret.wav", r / "AudioWAV" / "linked.wav"),
            _write_frames(r / "Image-01-FPS" / "linked", 3),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"sample\(s\) \['linked'\] whose files resolve outside the dataset root",
    ),
    (
        "frames-folder-symlink-out",
        lambda r, o: (
            _append_row(r, "train.csv", "linked,SAD"),
            _write_wav(r / "AudioWAV" / "linked.wav"),
            os.symlink(o / "secret_frames", r / "Image-01-FPS" / "linked"),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"\['linked'\] whose files resolve outside",
    ),
    (
        "frame-file-symlink-out",
        lambda r, o: (
            os.symlink(o / "secret_frames" / "00000.png", next((r / "Image-01-FPS").iterdir()) / "00001.png"),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"frame file\(s\) .*00001\.png.* resolve outside the dataset root",
    ),
    (
        "index-symlink-out",
        lambda r, o: (
            (o / "index.csv").write_text((r / "test.csv").read_text()),
            (r / "test.csv").unlink(),
            os.symlink(o / "index.csv", r / "test.csv"),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"index file .*test\.csv.* resolves outside the dataset root",
    ),
    (
        "sample-in-train-and-test",
        lambda r, o: (
            _append_row(r, "test.csv", (r / "train.csv").read_text().splitlines()[0]),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"1 sample\(s\) listed more than once: '1000_TR0_NEU_XX' in train and test",
    ),
    (
        "sample-twice-in-train",
        lambda r, o: (
            _append_row(r, "train.csv", (r / "train.csv").read_text().splitlines()[2]),
            load_cremad(r, **FAST),
        ),
        DatasetFolderError,
        r"'1000_TR2_NEU_XX' in train and train",
    ),
    (
        "empty-val-split",
        lambda r, o: load_cremad(r, val_fraction=0.1, **FAST),
        DatasetFolderError,
        r"the val split is empty: val_fraction=0\.1 .*'NEU' 4",
    ),
    (
        "class-only-in-test",
        lambda r, o: (
            (r / "train.csv").write_text(
                "\n".join(row for row in (r / "train.csv").read_text().splitlines() if not row.endswith(",DIS"))
            ),
            load_cremad(r, val_fraction=0.25, **FAST),
        ),
        DatasetFolderError,
        r"class 'DIS' has test samples but no training samples",
    ),
]


@pytest.mark.parametrize(
    ("probe", "error", "message"), [p[1:] for p in FOLDER_PROBES], ids=[p[0] for p in FOLDER_PROBES]
)
def test_folder_probe_fails_loudly_reads_nothing_outside_and_writes_nothing(layout, opened, probe, error, message):
    root, outside = layout
    base = root.parent
    before_outside = _snapshot(outside)
    with pytest.raises(error) as caught:
        probe(root, outside)
    assert re.search(message, str(caught.value)), f"{caught.value!s} does not match {message!r}"
    assert not [p for p in opened if p.is_relative_to(outside.resolve())]  # nothing outside the root was read
    after_outside = _snapshot(outside)
    after_outside.pop("index.csv", None)  # written by the probe's own setup
    assert after_outside == before_outside
    assert sorted(p.name for p in base.iterdir()) == ["outside", "root"]  # no output, no cache, nothing new


def test_the_same_folder_loads_when_the_probes_are_undone(layout) -> None:
    root, _ = layout
    ds = load_cremad(root, val_fraction=0.25, **FAST)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)


def test_a_folder_with_one_sample_per_class_names_the_split_instead_of_nan(tmp_path: Path) -> None:
    root = _cremad(tmp_path, per_class_train=1, per_class_test=1)
    before = _snapshot(root)
    with pytest.raises(DatasetFolderError, match=r"CREMA-D: the val split is empty.*'NEU' 1, 'HAP' 1"):
        load_cremad(root, **FAST)
    with pytest.raises(DatasetFolderError, match=r"the train split is empty.*val_fraction=0\.9"):
        load_cremad(root, val_fraction=0.9, **FAST)
    assert _snapshot(root) == before


# ---- split and adapter arguments ---------------------------------------------------------------------------


def test_split_refuses_non_finite_inputs_and_fractional_labels() -> None:
    with pytest.raises(ValueError, match=r"modality 'audio' holds 1 non-finite value\(s\) \(first in row 1\)"):
        Split({"audio": np.array([[0.0], [np.nan]])}, [0, 1])
    with pytest.raises(ValueError, match="labels must be integer class indices, got dtype float64"):
        Split({"audio": np.zeros((2, 1))}, [0.5, 1.0])
    with pytest.raises(TypeError, match="modality 'audio' must hold real numbers"):
        Split({"audio": np.array([["a"], ["b"]])}, [0, 1])


def test_loader_arguments_are_checked() -> None:
    split = Split({"audio": np.zeros((4, 2)), "image": np.zeros((4, 3))}, [0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"got the string 'audio'"):
        torch_loader(split, modalities="audio")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        torch_loader(split, batch_size=0)


def test_mfeat_views_as_a_string_are_refused() -> None:
    from pdmp.datasets import load_mfeat

    with pytest.raises(TypeError, match=r"got the string 'pix'"):
        load_mfeat(views="pix")
    with pytest.raises(ValueError, match="name a view twice"):
        load_mfeat(views=("pix", "pix"))
