"""Waveform helpers shared by the built-in digits and the folder loaders (torchaudio imported lazily)."""

from __future__ import annotations

import math
import wave
from dataclasses import asdict, dataclass

import numpy as np

from pdmp._validation import check_non_negative_finite, check_positive_finite, check_positive_int

__all__ = ["MelConfig", "add_noise_at_snr", "fit_window", "log_mel", "read_wav", "trim_silence"]


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end: ``torchaudio.transforms.MelSpectrogram`` then ``AmplitudeToDB(top_db)``."""

    sample_rate: int = 22050
    n_fft: int = 512
    hop_length: int = 441
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 8000.0
    top_db: float = 80.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            check_positive_int(getattr(self, name), name=f"mel.{name}")
        f_min = check_non_negative_finite(self.f_min, name="mel.f_min")
        f_max = check_positive_finite(self.f_max, name="mel.f_max")
        if not f_min < f_max <= self.sample_rate / 2:
            raise ValueError(
                f"mel needs 0 <= f_min < f_max <= sample_rate / 2, got f_min={self.f_min!r}, "
                f"f_max={self.f_max!r}, sample_rate={self.sample_rate!r}"
            )
        check_positive_finite(self.top_db, name="mel.top_db")

    def frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length  # torchaudio's center=True

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def log_mel(waves: np.ndarray, cfg: MelConfig, batch: int = 512) -> np.ndarray:
    """(N, S) float waveforms -> (N, 1, n_mels, T) float32 log-mel (dB), computed with torchaudio."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        power=2.0,
    )
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
    out = np.empty((len(waves), 1, cfg.n_mels, cfg.frames(waves.shape[1])), np.float32)
    with torch.no_grad():
        for i in range(0, len(waves), batch):
            spec = to_db(mel(torch.as_tensor(waves[i : i + batch], dtype=torch.float32)))
            # top_db is applied per clip (torchaudio's batch top_db clamps over the whole batch)
            floor = spec.amax(dim=(-2, -1), keepdim=True) - cfg.top_db
            out[i : i + batch, 0] = torch.maximum(spec, floor).numpy()
    return out


def trim_silence(x: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    """Drop leading/trailing samples whose magnitude is below ``rel_threshold`` of the peak."""
    if x.size == 0:
        return x
    loud = np.flatnonzero(np.abs(x) >= rel_threshold * np.abs(x).max())
    return x[loud[0] : loud[-1] + 1] if loud.size else x[:0]


def fit_window(x: np.ndarray, length: int, offset_frac: float) -> np.ndarray:
    """Place ``x`` in a zero window of ``length`` samples; ``offset_frac`` in [0, 1] positions it in the free room.

    A clip longer than the window is centre-cropped.
    """
    out = np.zeros(length, np.float32)
    if len(x) >= length:
        start = (len(x) - length) // 2
        out[:] = x[start : start + length]
        return out
    start = round(offset_frac * (length - len(x)))
    out[start : start + len(x)] = x
    return out


def add_noise_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float | None, active: np.ndarray) -> np.ndarray:
    """``signal + noise`` scaled so that speech power / noise power = ``snr_db`` (None: return ``signal``).

    Speech power is measured over ``active`` (the samples of the word), so silence padding does not
    change the SNR; ``noise`` is a unit-variance draw of the same shape (fixed per seed, so a sweep over
    ``snr_db`` only rescales it).
    """
    if snr_db is None:
        return signal.astype(np.float32)
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB or None (clean), got {snr_db!r}")
    p_signal = float(np.mean(signal[active] ** 2)) if active.any() else 0.0
    scale = np.sqrt(p_signal / (10.0 ** (snr_db / 10.0)))
    return (signal + scale * noise).astype(np.float32)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM WAV file (stdlib :mod:`wave`).

    Raises ``ValueError`` for a file that is not readable PCM WAV (8/16/24/32-bit).
    """
    try:
        with wave.open(str(path), "rb") as w:
            n_ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as exc:
        raise ValueError(f"not a readable PCM WAV file: {exc}") from exc
    if rate <= 0 or n_ch <= 0:
        raise ValueError(f"bad WAV header (rate {rate}, channels {n_ch})")
    usable = len(raw) // (width * n_ch) * (width * n_ch)
    raw = raw[:usable]
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample width {width} bytes")
    if x.size == 0:
        raise ValueError("WAV file has no samples")
    return x.reshape(-1, n_ch).mean(axis=1), rate


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return x.astype(np.float32)
    import torch
    import torchaudio.functional as F

    return F.resample(torch.as_tensor(x, dtype=torch.float32), orig, new).numpy()
