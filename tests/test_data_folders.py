"""Loaders for CREMA-D / AVE / Kinetics-Sounds, on tiny files written here in the documented layouts."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchaudio")
PIL = pytest.importorskip("PIL.Image")

from pdmp.datasets import (  # noqa: E402
    CREMAD_CLASSES,
    DatasetFolderError,
    DatasetFolderWarning,
    load_ave,
    load_cremad,
    load_kinetics_sounds,
)
from pdmp.datasets._audio import MelConfig, read_wav  # noqa: E402

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=160, n_mels=16, f_max=4000.0)
FAST = {"mel": MEL, "audio_seconds": 0.5, "frame_size": (8, 8), "progress": False}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_wav(path: Path, seconds: float = 0.3, rate: int = 8000, freq: float = 440.0, width: int = 2) -> None:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes((x * 32767).astype("<i2").tobytes())
        else:
            w.writeframes(((x + 1) * 127.5).astype(np.uint8).tobytes())


def write_frames(folder: Path, n: int = 2, color: int = 100, ext: str = "jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((12, 10, 3), color + 10 * i, np.uint8)
        PIL.fromarray(img).save(folder / f"{i:05d}.{ext}")


def make_cremad(root: Path, per_class_train: int = 4, per_class_test: int = 1) -> None:
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        rows = []
        for c, code in enumerate(CREMAD_CLASSES):
            for k in range(per):
                name = f"10{c:02d}_{split[:2].upper()}{k}_{code}_XX"
                rows.append(f"{name},{code}")
                write_wav(root / "AudioWAV" / f"{name}.wav", freq=200 + 100 * c)
                write_frames(root / "Image-01-FPS" / name, color=20 * c)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_cremad_loads_in_ogm_ge_layout(tmp_path):
    make_cremad(tmp_path)
    ds = load_cremad(tmp_path, val_fraction=0.25, **FAST)
    assert ds.modalities == ("audio", "visual") and ds.class_names == CREMAD_CLASSES
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)  # val carved from train.csv (stratified)
    assert ds.shapes() == {"audio": (1, 16, 26), "visual": (3, 8, 8)}
    assert ds.train.inputs["audio"].dtype == np.float32 and ds.train.labels.dtype == np.int64
    assert ds.test.inputs["visual"].min() >= 0.0 and ds.test.inputs["visual"].max() <= 1.0
    assert "train.csv" in ds.metadata["validation"]
    # label mapping follows the index: frames were written with colour 20 * class
    vis = ds.test.inputs["visual"][:, 0, 0, 0] * 255
    np.testing.assert_allclose(vis, 20 * ds.test.labels + 10, atol=3)  # the middle of 2 frames (+0, +10)
    names = set(ds.train.extras["name"]) | set(ds.val.extras["name"])
    assert len(names) == 24 and not names & set(ds.test.extras["name"])


def test_cremad_multiple_frames_and_header_row(tmp_path):
    make_cremad(tmp_path, per_class_train=2)
    (tmp_path / "test.csv").write_text("name,label\n" + (tmp_path / "test.csv").read_text())
    ds = load_cremad(tmp_path, n_frames=3, val_fraction=0.5, **FAST)
    assert ds.shapes()["visual"] == (9, 8, 8) and len(ds.test) == 6


def test_missing_folder_and_missing_index(tmp_path):
    with pytest.raises(DatasetFolderError, match="does not exist"):
        load_cremad(tmp_path / "nope", **FAST)
    make_cremad(tmp_path)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(DatasetFolderError, match=r"index file .*test\.csv.* is missing"):
        load_cremad(tmp_path, **FAST)


def test_missing_files_listed_in_index_are_all_reported(tmp_path):
    make_cremad(tmp_path)
    wavs = sorted((tmp_path / "AudioWAV").glob("*.wav"))
    for w in wavs[:3]:
        w.unlink()
    frames = sorted((tmp_path / "Image-01-FPS").iterdir())[-1]
    for f in frames.iterdir():
        f.unlink()
    with pytest.raises(DatasetFolderError) as err:
        load_cremad(tmp_path, **FAST)
    msg = str(err.value)
    assert "3 of 30 samples listed in the index have no AudioWAV/<name>.wav" in msg
    assert wavs[0].stem in msg
    assert "1 of 30 samples listed in the index have no frames" in msg and frames.name in msg
    with pytest.warns(DatasetFolderWarning, match="3 of 30"):
        ds = load_cremad(tmp_path, on_error="skip", val_fraction=0.25, **FAST)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 26
    assert len(ds.metadata["skipped"]) == 4


def test_corrupt_audio_and_image_files(tmp_path):
    make_cremad(tmp_path)
    bad_wav = sorted((tmp_path / "AudioWAV").glob("*.wav"))[0]
    bad_wav.write_bytes(b"RIFF\x00\x00garbage")
    bad_img_dir = sorted((tmp_path / "Image-01-FPS").iterdir())[5]
    for f in bad_img_dir.iterdir():
        f.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetFolderError, match="2 of 30 samples have unreadable audio or image files") as err:
        load_cremad(tmp_path, **FAST)
    assert bad_wav.name in str(err.value) and bad_img_dir.name in str(err.value)
    with pytest.warns(DatasetFolderWarning, match="unreadable"):
        ds = load_cremad(tmp_path, on_error="skip", val_fraction=0.25, **FAST)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 28


def test_class_count_disagreeing_with_index(tmp_path):
    make_cremad(tmp_path)
    with pytest.raises(DatasetFolderError, match="name 6 classes but CREMA-D has 7"):
        load_cremad(tmp_path, n_classes=7, **FAST)
    rows = (tmp_path / "train.csv").read_text().replace(",DIS", ",BORED")
    (tmp_path / "train.csv").write_text(rows)
    with pytest.raises(DatasetFolderError, match=r"index labels \['BORED'\] are not among the classes"):
        load_cremad(tmp_path, **FAST)


def make_ave(root: Path, classes: tuple[str, ...], with_val: bool = True) -> None:
    splits = {"trainSet.txt": 3, "testSet.txt": 1}
    if with_val:
        splits["valSet.txt"] = 1
    for fname, per in splits.items():
        lines = ["Category&VideoID&Quality&StartTime&EndTime"] if fname == "trainSet.txt" else []
        for c, cat in enumerate(classes):
            for k in range(per):
                vid = f"{fname[:2]}{c}x{k}"
                lines.append(f"{cat}&{vid}&good&0&10")
                write_wav(root / "Audio" / f"{vid}.wav", rate=16000, width=1)
                write_frames(root / "Image-01-FPS" / vid, n=3, ext="png")
        (root / fname).write_text("\n".join(lines) + "\n")


def test_ave_layout_with_its_own_validation_index(tmp_path):
    classes = ("Church bell", "Male speech, man speaking", "Dog")
    make_ave(tmp_path, classes)
    ds = load_ave(tmp_path, n_classes=3, **FAST)
    assert ds.class_names == tuple(sorted(classes))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 3)
    assert ds.metadata["validation"] == "valSet.txt"
    with pytest.raises(DatasetFolderError, match="name 3 classes but AVE has 28"):
        load_ave(tmp_path, **FAST)


def test_kinetics_sounds_layout_without_val(tmp_path):
    classes = ("playing drums", "chopping wood")
    for fname, per in (("train.csv", 4), ("test.csv", 2)):
        rows = []
        for c, cls in enumerate(classes):
            for k in range(per):
                name = f"{fname[:2]}_{c}_{k}"
                rows.append(f'{name},"{cls}"')
                write_wav(tmp_path / "Audio" / f"{name}.wav")
                write_frames(tmp_path / "Image-01-FPS" / name, n=1)
        (tmp_path / fname).write_text("\n".join(rows) + "\n")
    ds = load_kinetics_sounds(tmp_path, n_classes=2, val_fraction=0.25, seed=1, **FAST)
    assert ds.class_names == ("chopping wood", "playing drums")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 4)
    again = load_kinetics_sounds(tmp_path, n_classes=2, val_fraction=0.25, seed=1, **FAST)
    np.testing.assert_array_equal(ds.val.extras["name"], again.val.extras["name"])
    np.testing.assert_array_equal(ds.train.inputs["audio"], again.train.inputs["audio"])


def test_read_wav_formats_and_errors(tmp_path):
    write_wav(tmp_path / "a.wav", seconds=0.1, rate=8000, width=2)
    x, rate = read_wav(str(tmp_path / "a.wav"))
    assert rate == 8000 and x.shape == (800,) and np.abs(x).max() == pytest.approx(0.5, abs=0.01)
    (tmp_path / "b.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable PCM WAV"):
        read_wav(str(tmp_path / "b.wav"))
    with pytest.raises(ValueError, match="on_error"):
        load_cremad(tmp_path, on_error="ignore")
