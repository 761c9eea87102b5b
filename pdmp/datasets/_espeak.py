"""Speech synthesis with eSpeak NG, the one place that knows how to reach it.

Two routes, tried in this order:

1. the ``espeakng-loader`` wheel (``pip install espeakng-loader``), which bundles ``libespeak-ng`` and
   its voice data; driven in-process through :mod:`ctypes` (no root, no subprocess);
2. a system ``espeak-ng`` binary on ``PATH`` (e.g. Debian's ``apt-get install espeak-ng``), run with
   ``--stdout``.

If neither is there, :func:`synthesizer` raises :class:`EspeakUnavailableError` naming what to install.

Determinism quirk: libespeak-ng's waveform generator carries hidden state from one utterance to the
next and draws breath noise from random generators, so the same word said twice in one process differs
by a few samples. :func:`synthesize` therefore runs each batch of clips in a *fresh* worker process
(``python -m pdmp.datasets._espeak``) with both generators seeded before every clip: the same job
list always gives the same samples. The binary route runs one process per clip (also seeded is not
possible there: it is deterministic only as far as the installed ``espeak-ng`` is).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["EspeakUnavailableError", "Synthesizer", "Voice", "available_variants", "synthesize", "synthesizer"]

_INSTALL_HINT = (
    "eSpeak NG is needed to synthesise the spoken digits. Install the wheel that bundles it: "
    "`pip install 'espeakng-loader>=0.2.4,<0.3'` (or `pip install 'pdmp[bench]'`); "
    "alternatively install a system binary, e.g. `apt-get install espeak-ng`."
)


class EspeakUnavailableError(RuntimeError):
    """Neither the ``espeakng-loader`` wheel nor an ``espeak-ng`` binary could be used."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an accent, a voice variant, a speed (words/min) and a pitch (0-99)."""

    language: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def key(self) -> str:
        return f"{self.name}|s{self.speed}|p{self.pitch}"


class Synthesizer:
    """Interface: ``say(text, voice) -> (int16 samples, sample_rate)``; ``backend`` names the route."""

    backend = "abstract"
    sample_rate = 22050

    def say(self, text: str, voice: Voice) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH = 1, 2, 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _LibrarySynthesizer(Synthesizer):
    """In-process synthesis through the shared library shipped by ``espeakng-loader``."""

    backend = "espeakng-loader"

    def __init__(self, library_path: str, data_path: str) -> None:
        self._lib = ctypes.CDLL(library_path)
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        # the data path is the folder *containing* espeak-ng-data
        parent = os.path.dirname(os.path.abspath(data_path))
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, parent.encode(), 0)
        if rate <= 0:
            raise EspeakUnavailableError(f"libespeak-ng failed to initialise with data at {data_path!r}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def _collect(wav: ctypes.Array, n: int, _events: int) -> int:
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(_collect)  # keep a reference: the library holds a raw pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._libc = ctypes.CDLL(None)
        self._voice: str | None = None

    def say(self, text: str, voice: Voice) -> np.ndarray:
        if voice.name != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak NG does not know voice {voice.name!r}")
            self._voice = voice.name
        self._lib.espeak_SetParameter(_ESPEAK_RATE, int(voice.speed), 0)
        self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(voice.pitch), 0)
        self._lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        self._chunks = []
        self._lib.espeak_ng_SetRandSeed(1)  # its own generator ...
        self._libc.srand(1)  # ... and libc's rand(), both used for breath noise
        err = self._lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r} / {voice.key()}")
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


class _BinarySynthesizer(Synthesizer):
    """Synthesis by running a system ``espeak-ng --stdout`` (one process per clip; slower)."""

    backend = "espeak-ng binary"

    def __init__(self, binary: str) -> None:
        self._binary = binary

    def say(self, text: str, voice: Voice) -> np.ndarray:
        cmd = [self._binary, "--stdout", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), text]
        out = subprocess.run(cmd, check=True, capture_output=True).stdout
        # --stdout writes a 44-byte header whose size fields are 0x7FFFFFFF: read the samples after it
        self.sample_rate = int.from_bytes(out[24:28], "little") or 22050
        body = out[44:]
        return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.int16)


_CACHED: Synthesizer | None = None


def synthesizer(prefer: str = "auto") -> Synthesizer:
    """The process-wide synthesiser. ``prefer``: ``"auto"`` (library, then binary), ``"library"``, ``"binary"``."""
    global _CACHED
    if prefer not in ("auto", "library", "binary"):
        raise ValueError(f"unknown eSpeak route {prefer!r}; known: auto, library, binary")
    if _CACHED is not None and prefer in ("auto", _route(_CACHED)):
        return _CACHED
    errors = []
    if prefer in ("auto", "library"):
        try:
            import espeakng_loader

            _CACHED = _LibrarySynthesizer(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
            return _CACHED
        except (ImportError, OSError, RuntimeError) as exc:
            errors.append(f"espeakng-loader: {exc}")
    if prefer in ("auto", "binary"):
        binary = shutil.which("espeak-ng")
        if binary is not None:
            _CACHED = _BinarySynthesizer(binary)
            return _CACHED
        errors.append("no `espeak-ng` on PATH")
    raise EspeakUnavailableError(_INSTALL_HINT + " (tried: " + "; ".join(errors) + ")")


def backend_name() -> str:
    """The route :func:`synthesizer` would take, found without loading anything (part of cache keys)."""
    import importlib.util

    if importlib.util.find_spec("espeakng_loader") is not None:
        return _LibrarySynthesizer.backend
    if shutil.which("espeak-ng") is not None:
        return _BinarySynthesizer.backend
    return "unavailable"


def _route(s: Synthesizer) -> str:
    return "library" if isinstance(s, _LibrarySynthesizer) else "binary"


def available_variants() -> list[str]:
    """Voice variants (``en+<variant>``) shipped with the bundled data, sorted; empty if unknown."""
    try:
        import espeakng_loader

        folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
        return sorted(os.listdir(folder))
    except (ImportError, OSError, RuntimeError):
        return []


def synthesize(
    jobs: Sequence[tuple[str, Voice]],
    prefer: str = "auto",
    chunk: int = 400,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], int, str]:
    """Say every ``(text, voice)``; returns (int16 clips, sample rate, backend). Deterministic (see module doc).

    The library route runs ``chunk`` clips per fresh worker process; ``on_chunk(n_done)`` reports progress.
    """
    synth = synthesizer(prefer)
    if not isinstance(synth, _LibrarySynthesizer):
        out = []
        for i, (text, voice) in enumerate(jobs):
            out.append(synth.say(text, voice))
            if on_chunk is not None and (i + 1) % chunk == 0:
                on_chunk(chunk)
        return out, synth.sample_rate, synth.backend
    clips: list[np.ndarray] = []
    rate = synth.sample_rate
    with tempfile.TemporaryDirectory(prefix="pdmp-espeak-") as tmp:
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            src, dst = os.path.join(tmp, "jobs.json"), os.path.join(tmp, "clips.npz")
            with open(src, "w") as fh:
                json.dump([[t, asdict(v)] for t, v in part], fh)
            proc = subprocess.run(
                [sys.executable, "-m", "pdmp.datasets._espeak", src, dst], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"eSpeak NG worker failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            with np.load(dst, allow_pickle=False) as z:
                samples, lengths, rate = z["samples"], z["lengths"], int(z["rate"])
            clips.extend(np.split(samples, np.cumsum(lengths)[:-1]))
            if on_chunk is not None:
                on_chunk(len(part))
    return clips, rate, synth.backend


def _worker(src: str, dst: str) -> None:
    synth = synthesizer("library")
    with open(src) as fh:
        jobs = json.load(fh)
    clips = [synth.say(text, Voice(**voice)) for text, voice in jobs]
    np.savez(
        dst,
        samples=np.concatenate(clips) if clips else np.zeros(0, np.int16),
        lengths=np.array([len(c) for c in clips], np.int64),
        rate=synth.sample_rate,
    )


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
