"""Loaders for the paper's datasets (CREMA-D, AVE, Kinetics-Sounds) from a local folder you provide.

None of these datasets ships in a package: download and preprocess them yourself into the layout
below, which follows the one the field's usual preprocessing (OGM-GE and the code bases derived from
it) produces. Audio must be PCM WAV (read with the stdlib :mod:`wave`); frames JPEG or PNG (read with
Pillow, which comes with matplotlib). Folder names can be overridden with ``audio_dir``/``frames_dir``.

CREMA-D (6 emotions; index rows ``name,label`` with labels NEU/HAP/SAD/FEA/ANG/DIS, no header needed)::

    root/train.csv            1001_DFA_ANG_XX,ANG
    root/test.csv
    root/AudioWAV/<name>.wav
    root/Image-01-FPS/<name>/*.jpg      frames extracted at 1 fps

AVE (28 events; index lines ``Category&VideoID&Quality&StartTime&EndTime``, a header line is skipped)::

    root/trainSet.txt  root/valSet.txt (optional)  root/testSet.txt
    root/Audio/<VideoID>.wav
    root/Image-01-FPS/<VideoID>/*.jpg

Kinetics-Sounds (31 classes; index rows ``name,label`` with class *names* as labels)::

    root/train.csv  root/val.csv (optional)  root/test.csv
    root/Audio/<name>.wav
    root/Image-01-FPS/<name>/*.jpg

Outputs: ``audio`` log-mel ``(N, 1, n_mels, T)`` (torchaudio, same front end as the built-in digits,
clips tiled or cut to ``audio_seconds`` as OGM-GE does, standardised with training statistics) and
``visual`` ``(N, 3 * n_frames, H, W)`` in [0, 1]: ``n_frames`` frames at the middles of equal segments of the
sorted frame files, RGB, resized to ``frame_size``, stacked frame-major along channels. Where there is no
validation index, ``val_fraction`` of the training rows (class-stratified, seeded) becomes validation.

Checked before any audio or image is read, each raising :class:`DatasetFolderError` that names the
index file, the sample, the class or the split: a sample name that is absolute, contains ``..`` or
resolves (also through a symlink) outside the dataset root is refused, so no file outside the root is
ever read; a sample listed twice (in one split, or in train and test) is refused; every split must hold
samples and every class of the validation/test splits must have training samples (and, when validation
is carved from training, validation samples too).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import check_bool, check_number, check_positive_finite, check_positive_int, check_seed
from pdmp.datasets._audio import MelConfig, log_mel, read_wav, resample
from pdmp.datasets._base import MultimodalDataset, Split, stratified_split
from pdmp.datasets.av_digits import _progress, _rng

__all__ = [
    "AVE_CLASSES",
    "CREMAD_CLASSES",
    "DatasetFolderError",
    "DatasetFolderWarning",
    "load_ave",
    "load_cremad",
    "load_kinetics_sounds",
]

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "ANG", "DIS")  # OGM-GE's order
AVE_CLASSES_COUNT = 28
KINETICS_SOUNDS_CLASSES_COUNT = 31
AVE_CLASSES: tuple[str, ...] = ()  # taken from the index (sorted) unless the caller passes class_names
FOLDER_MEL = MelConfig(sample_rate=16000, n_fft=512, hop_length=320, n_mels=64, f_min=20.0, f_max=8000.0)
_FRAME_EXTS = (".jpg", ".jpeg", ".png")


class DatasetFolderError(ValueError):
    """A dataset folder does not match the documented layout; the message says what and where."""


class DatasetFolderWarning(UserWarning):
    """Samples were skipped because their files were missing or unreadable (``on_error="skip"``)."""


@dataclass(frozen=True)
class _Row:
    name: str
    label: str


def _list_problem(what: str, items: Sequence[str], n_total: int) -> str:
    shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
    return f"{len(items)} of {n_total} samples {what}: {shown}"


def _read_csv_index(path: Path) -> list[_Row]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for lineno, rec in enumerate(csv.reader(fh), 1):
            rec = [r.strip() for r in rec]
            if not rec or not any(rec):
                continue
            if len(rec) < 2:
                raise DatasetFolderError(f"{path}:{lineno}: expected 'name,label', got {','.join(rec)!r}")
            if lineno == 1 and rec[0].lower() in ("name", "filename", "file", "id", "video_id", "youtube_id"):
                continue  # header
            rows.append(_Row(rec[0], rec[1]))
    return rows


def _read_ave_index(path: Path) -> list[_Row]:
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("&")
            if len(parts) < 2:
                raise DatasetFolderError(
                    f"{path}:{lineno}: expected 'Category&VideoID&Quality&Start&End', got {line!r}"
                )
            if parts[0].lower() == "category" and parts[1].lower() == "videoid":
                continue  # header
            rows.append(_Row(parts[1], parts[0]))
    return rows


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink followed, lies inside the (resolved) ``root``."""
    return path.resolve().is_relative_to(root)


def _frame_files(folder: Path, root: Path) -> list[Path]:
    """Frame images in ``folder``; a frame that resolves outside ``root`` (a symlink out) is refused."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _FRAME_EXTS)
    outside = [str(p) for p in files if not _inside(p, root)]
    if outside:
        raise DatasetFolderError(
            f"frame file(s) {outside[:5]} resolve outside the dataset root {str(root)!r} (a symlink out of it); "
            "refusing to read them: copy the files into the dataset folder"
        )
    return files


def _unsafe_name(name: str) -> bool:
    """A sample name that could address a file outside its folder: absolute, with '..', or with NUL."""
    parts = name.replace("\\", "/").split("/")
    return (
        not name
        or "\0" in name
        or name.startswith(("/", "\\", "~"))
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
        or any(part in ("..", ".") for part in parts)
    )


def _check_index_rows(
    name: str,
    root: Path,
    indexes: dict[str, list[_Row]],
    index_files: dict[str, str],
    audio_dir: str,
    frames_dir: str,
) -> None:
    """Refuse path traversal and samples listed twice, before any sample file is touched."""
    for split, rows in indexes.items():
        unsafe = [r.name for r in rows if _unsafe_name(r.name)]
        if unsafe:
            raise DatasetFolderError(
                f"{name}: index {index_files[split]!r} lists sample name(s) {unsafe[:5]} that are absolute or "
                "contain '..': a sample name must stay inside the dataset folder (path traversal refused)"
            )
        outside = [
            r.name
            for r in rows
            if not (_inside(root / audio_dir / f"{r.name}.wav", root) and _inside(root / frames_dir / r.name, root))
        ]
        if outside:
            raise DatasetFolderError(
                f"{name}: index {index_files[split]!r} lists sample(s) {outside[:5]} whose files resolve outside "
                f"the dataset root {str(root)!r} (through a symlink); refusing to read them"
            )
    where: dict[str, list[str]] = {}
    for split, rows in indexes.items():
        for r in rows:
            where.setdefault(r.name, []).append(split)
    twice = {sample: splits for sample, splits in where.items() if len(splits) > 1}
    if twice:
        shown = ", ".join(f"{sample!r} in {' and '.join(splits)}" for sample, splits in list(twice.items())[:5])
        raise DatasetFolderError(
            f"{name}: {len(twice)} sample(s) listed more than once: {shown}; a sample must be in exactly one "
            "split (a sample in both train and test inflates the test score)"
        )


def _check_class_coverage(
    name: str, class_names: Sequence[str], split_labels: dict[str, list[int]], carved: bool, val_fraction: float
) -> None:
    """Every split non-empty; every class evaluated has training samples. Raised before standardisation,
    which would otherwise turn an empty training split into NaN inputs."""
    train_counts = np.bincount(np.asarray(split_labels["train"], dtype=np.int64), minlength=len(class_names))
    val_counts = np.bincount(np.asarray(split_labels["val"], dtype=np.int64), minlength=len(class_names))
    for split in ("train", "val", "test"):
        if split_labels[split]:
            continue
        detail = ""
        if carved and split in ("train", "val"):
            per_class = ", ".join(
                f"{class_names[int(c)]!r} {int(train_counts[c] + val_counts[c])}"
                for c in np.flatnonzero(train_counts + val_counts)
            )
            detail = (
                f": val_fraction={val_fraction} of each class's training rows leaves none for {split} "
                f"(training rows per class: {per_class}); add samples, change val_fraction or provide a "
                "validation index"
            )
        raise DatasetFolderError(f"{name}: the {split} split is empty{detail or '; add samples to it'}")
    for split in ("val", "test"):
        missing = sorted(set(split_labels[split]) - set(split_labels["train"]))
        if missing:
            raise DatasetFolderError(
                f"{name}: class {class_names[missing[0]]!r} has {split} samples but no training samples "
                f"(the {split} split holds {split_labels[split].count(missing[0])} of it); every class needs "
                "training samples"
            )
    if carved:
        unseen = [class_names[int(c)] for c in np.flatnonzero(train_counts) if val_counts[c] == 0]
        if unseen:
            warnings.warn(
                f"{name}: class(es) {unseen[:5]} have too few training rows for val_fraction={val_fraction} and "
                "get no validation sample; validation scores ignore them",
                DatasetFolderWarning,
                stacklevel=4,
            )


def _check_options(
    val_fraction: Any,
    seed: Any,
    audio_seconds: Any,
    mel: Any,
    n_frames: Any,
    frame_size: Any,
    progress: Any,
    audio_dir: Any,
    frames_dir: Any,
    class_names: Any,
    n_classes: Any,
) -> None:
    fraction = check_number(val_fraction, name="val_fraction")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    check_seed(seed)
    check_positive_finite(audio_seconds, name="audio_seconds")
    if not isinstance(mel, MelConfig):
        raise TypeError(f"mel must be a pdmp.datasets MelConfig, got {type(mel).__name__}")
    check_positive_int(n_frames, name="n_frames")
    if isinstance(frame_size, (str, bytes)) or not isinstance(frame_size, (tuple, list)) or len(frame_size) != 2:
        raise ValueError(f"frame_size must be (height, width), got {frame_size!r}")
    for side in frame_size:
        check_positive_int(side, name="frame_size")
    check_bool(progress, name="progress")
    for what, folder in (("audio_dir", audio_dir), ("frames_dir", frames_dir)):
        if not isinstance(folder, str) or _unsafe_name(folder):
            raise ValueError(f"{what} must be a folder name inside the dataset root, got {folder!r}")
    if class_names is not None:
        if isinstance(class_names, (str, bytes)) or not all(isinstance(c, str) for c in class_names):
            raise TypeError(f"class_names must be a list of strings, got {class_names!r}")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {list(class_names)}")
    if n_classes is not None:
        check_positive_int(n_classes, name="n_classes")


def _load_frames(files: list[Path], n_frames: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    # the middle of n_frames equal segments of the clip (with n_frames=1: the middle frame)
    pick = np.minimum(((np.arange(n_frames) + 0.5) * len(files) / n_frames).astype(int), len(files) - 1)
    out = []
    for i in pick:
        with Image.open(files[i]) as im:
            rgb = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            out.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.concatenate(out, axis=0)


def _fixed_length(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / len(x))))
    return x[:n]


def load_av_folder(
    root: str | Path,
    *,
    name: str,
    index_files: dict[str, str],
    read_index: Callable[[Path], list[_Row]],
    audio_dir: str,
    frames_dir: str,
    class_names: Sequence[str] | None,
    n_classes: int | None,
    val_fraction: float = 0.1,
    seed: int = 0,
    audio_seconds: float = 3.0,
    mel: MelConfig = FOLDER_MEL,
    n_frames: int = 1,
    frame_size: tuple[int, int] = (64, 64),
    on_error: str = "raise",
    progress: bool = True,
) -> MultimodalDataset:
    """The generic reader behind :func:`load_cremad`, :func:`load_ave` and :func:`load_kinetics_sounds`."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    _check_options(
        val_fraction,
        seed,
        audio_seconds,
        mel,
        n_frames,
        frame_size,
        progress,
        audio_dir,
        frames_dir,
        class_names,
        n_classes,
    )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFolderError(
            f"{name}: dataset folder {str(root)!r} does not exist (see pdmp.datasets.folders for the layout)"
        )
    # Every path below is checked against the resolved root: nothing outside it is ever read.
    root = root.resolve()
    indexes: dict[str, list[_Row]] = {}
    for split, fname in index_files.items():
        path = root / fname
        if path.is_file():
            if not _inside(path, root):
                raise DatasetFolderError(f"{name}: index file {str(path)!r} resolves outside the dataset root")
            indexes[split] = read_index(path)
        elif split != "val":
            raise DatasetFolderError(
                f"{name}: index file {str(path)!r} is missing (expected {', '.join(index_files.values())})"
            )
    for split, rows in indexes.items():
        if not rows:
            raise DatasetFolderError(f"{name}: index {index_files[split]!r} lists no samples")
    for sub in (audio_dir, frames_dir):
        if not (root / sub).is_dir():
            raise DatasetFolderError(f"{name}: folder {str(root / sub)!r} is missing")
        if not _inside(root / sub, root):
            raise DatasetFolderError(f"{name}: folder {str(root / sub)!r} resolves outside the dataset root")
    _check_index_rows(name, root, indexes, index_files, audio_dir, frames_dir)

    seen = sorted({r.label for rows in indexes.values() for r in rows})
    if class_names is None:
        class_names = tuple(seen)
    unknown = [lab for lab in seen if lab not in class_names]
    if unknown:
        raise DatasetFolderError(f"{name}: index labels {unknown[:5]} are not among the classes {list(class_names)}")
    if n_classes is not None and len(seen) != n_classes:
        raise DatasetFolderError(
            f"{name}: the index files name {len(seen)} classes but {name} has {n_classes} "
            f"(classes found: {seen[:10]}{' ...' if len(seen) > 10 else ''}); pass n_classes=None to accept it"
        )
    cls = {c: i for i, c in enumerate(class_names)}

    # check every listed file first, so one error reports all the problems
    n_total = sum(len(r) for r in indexes.values())
    missing_audio, missing_frames = [], []
    for rows in indexes.values():
        for r in rows:
            if not (root / audio_dir / f"{r.name}.wav").is_file():
                missing_audio.append(r.name)
            if not _frame_files(root / frames_dir / r.name, root):
                missing_frames.append(r.name)
    problems = []
    if missing_audio:
        problems.append(_list_problem(f"listed in the index have no {audio_dir}/<name>.wav", missing_audio, n_total))
    if missing_frames:
        problems.append(
            _list_problem(f"listed in the index have no frames in {frames_dir}/<name>/", missing_frames, n_total)
        )
    bad = set(missing_audio) | set(missing_frames)
    if problems:
        _report(name, problems, on_error)

    n_samples = round(audio_seconds * mel.sample_rate)
    loaded: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[int], list[str]]] = {}
    corrupt: list[str] = []
    for split, rows in indexes.items():
        waves, frames, labels, names = [], [], [], []
        for r in _progress(rows, len(rows), f"{name} {split}", progress):
            if r.name in bad:
                continue
            wav_path = root / audio_dir / f"{r.name}.wav"
            try:
                x, rate = read_wav(str(wav_path))
            except ValueError as exc:
                corrupt.append(f"{wav_path} ({exc})")
                continue
            files = _frame_files(root / frames_dir / r.name, root)
            try:
                img = _load_frames(files, n_frames, frame_size)
            except (OSError, ValueError, SyntaxError) as exc:
                corrupt.append(f"{root / frames_dir / r.name} ({type(exc).__name__}: {exc})")
                continue
            waves.append(_fixed_length(resample(x, rate, mel.sample_rate), n_samples))
            frames.append(img)
            labels.append(cls[r.label])
            names.append(r.name)
        loaded[split] = (waves, frames, labels, names)
    if corrupt:
        _report(name, [_list_problem("have unreadable audio or image files", corrupt, n_total)], on_error)

    carved = "val" not in loaded
    if carved:
        tr_w, tr_f, tr_y, tr_n = loaded["train"]
        y = np.asarray(tr_y)
        val_idx, train_idx = stratified_split(y, (val_fraction, 1 - val_fraction), _rng(seed, f"{name}_val"))
        loaded["val"] = tuple([v[i] for i in val_idx] for v in (tr_w, tr_f, tr_y, tr_n))  # type: ignore[assignment]
        loaded["train"] = tuple([v[i] for i in train_idx] for v in (tr_w, tr_f, tr_y, tr_n))  # type: ignore[assignment]
        val_source = f"{val_fraction:.0%} of {index_files['train']} (class-stratified, seed {seed})"
    else:
        val_source = index_files["val"]

    _check_class_coverage(name, class_names, {k: list(v[2]) for k, v in loaded.items()}, carved, val_fraction)
    specs = {}
    for split in ("train", "val", "test"):
        w = loaded[split][0]
        specs[split] = (
            log_mel(np.stack(w), mel) if w else np.zeros((0, 1, mel.n_mels, mel.frames(n_samples)), np.float32)
        )
    mean, std = float(specs["train"].mean()), float(specs["train"].std() + 1e-6)
    frame_shape = (3 * n_frames, *frame_size)
    splits = {}
    for split in ("train", "val", "test"):
        _, f, split_labels, names = loaded[split]
        vis = np.stack(f) if f else np.zeros((0, *frame_shape), np.float32)
        splits[split] = Split(
            {"audio": (specs[split] - mean) / std, "visual": vis},
            np.asarray(split_labels, np.int64),
            {"name": np.asarray(names, dtype=str)},
        )
    meta: dict[str, Any] = {
        "root": str(root),
        "index_files": index_files,
        "validation": val_source,
        "seed": seed,
        "audio_seconds": audio_seconds,
        "mel": mel.to_dict(),
        "n_frames": n_frames,
        "frame_size": list(frame_size),
        "spectrogram_standardisation": {"mean": mean, "std": std, "fitted_on": "train"},
        "skipped": sorted(bad) + corrupt,
    }
    return MultimodalDataset(name, ("audio", "visual"), tuple(class_names), metadata=meta, **splits)


def _report(name: str, problems: list[str], on_error: str) -> None:
    msg = f"{name}: " + "; ".join(problems)
    if on_error == "raise":
        raise DatasetFolderError(msg + " (pass on_error='skip' to drop these samples with a warning)")
    warnings.warn(msg + " (skipped)", DatasetFolderWarning, stacklevel=3)


def load_cremad(
    root: str | Path,
    *,
    audio_dir: str = "AudioWAV",
    frames_dir: str = "Image-01-FPS",
    n_classes: int | None = 6,
    **kwargs: Any,
) -> MultimodalDataset:
    """CREMA-D from ``root`` (``train.csv``/``test.csv``, ``AudioWAV/``, ``Image-01-FPS/``).

    Keyword arguments: ``val_fraction`` (0.1), ``seed``, ``audio_seconds`` (3.0), ``mel``, ``n_frames`` (1),
    ``frame_size`` ((64, 64)), ``on_error`` ("raise" or "skip"), ``progress``.
    """
    return load_av_folder(
        root,
        name="CREMA-D",
        index_files={"train": "train.csv", "test": "test.csv"},
        read_index=_read_csv_index,
        audio_dir=audio_dir,
        frames_dir=frames_dir,
        class_names=CREMAD_CLASSES,
        n_classes=n_classes,
        **kwargs,
    )


def load_ave(
    root: str | Path,
    *,
    audio_dir: str = "Audio",
    frames_dir: str = "Image-01-FPS",
    class_names: Sequence[str] | None = None,
    n_classes: int | None = AVE_CLASSES_COUNT,
    **kwargs: Any,
) -> MultimodalDataset:
    """AVE from ``root`` (``trainSet.txt``/``valSet.txt``/``testSet.txt``, ``Audio/``, ``Image-01-FPS/``).

    Classes are the sorted categories of the index unless ``class_names`` is given; the AVE has 28.
    """
    return load_av_folder(
        root,
        name="AVE",
        index_files={"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"},
        read_index=_read_ave_index,
        audio_dir=audio_dir,
        frames_dir=frames_dir,
        class_names=class_names,
        n_classes=n_classes,
        audio_seconds=kwargs.pop("audio_seconds", 10.0),
        **kwargs,
    )


def load_kinetics_sounds(
    root: str | Path,
    *,
    audio_dir: str = "Audio",
    frames_dir: str = "Image-01-FPS",
    class_names: Sequence[str] | None = None,
    n_classes: int | None = KINETICS_SOUNDS_CLASSES_COUNT,
    **kwargs: Any,
) -> MultimodalDataset:
    """Kinetics-Sounds from ``root``.

    Expects ``train.csv``/``val.csv`` (optional)/``test.csv`` with class names, ``Audio/``, ``Image-01-FPS/``.
    """
    return load_av_folder(
        root,
        name="Kinetics-Sounds",
        index_files={"train": "train.csv", "val": "val.csv", "test": "test.csv"},
        read_index=_read_csv_index,
        audio_dir=audio_dir,
        frames_dir=frames_dir,
        class_names=class_names,
        n_classes=n_classes,
        audio_seconds=kwargs.pop("audio_seconds", 10.0),
        **kwargs,
    )
