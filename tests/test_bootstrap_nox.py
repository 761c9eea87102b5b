"""The README's two commands start under Debian's own python3 (PEP 668), with and without ensurepip.

``tools/nox.sh`` is what both README commands and ``.ci/run`` call. These tests run it on a copy of
the script beside a tiny noxfile, with Debian's system Python (the one that refuses ``pip install``),
and check that nox starts and lists the sessions. They need that Python and the package registry;
they are skipped where ``/usr/bin/python3`` is not an externally managed Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    if not python.exists():
        return False
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"], capture_output=True, text=True
    ).stdout.strip()
    return bool(stdlib) and (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


pytestmark = pytest.mark.skipif(
    not _externally_managed(SYSTEM_PYTHON), reason="needs Debian's externally managed /usr/bin/python3"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "nox.sh", tmp_path / "tools" / "nox.sh")
    (tmp_path / "noxfile.py").write_text(
        "import nox\n\n\n@nox.session(venv_backend='none')\ndef hello(session):\n    session.log('hello')\n"
    )
    return tmp_path


def _run(project: Path, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PYTHON"] = python
    return subprocess.run(
        ["sh", "tools/nox.sh", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_system_python_refuses_pip_install_so_the_plain_command_would_fail():
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run", "nox"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "externally-managed-environment" in result.stderr


def test_nox_starts_with_debians_python(project: Path):
    result = _run(project, str(SYSTEM_PYTHON), "-s", "hello")
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stderr
    # The second call reuses the private venv.
    again = _run(project, str(SYSTEM_PYTHON), "--list")
    assert again.returncode == 0 and "hello" in again.stdout


def test_nox_starts_without_ensurepip(project: Path, tmp_path_factory: pytest.TempPathFactory):
    # A python3 whose `-m venv` fails as on Debian without python3-venv ("ensurepip is not available").
    fake = tmp_path_factory.mktemp("bin") / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" != "--without-pip" ]; then\n'
        '    echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        "    exit 1\n"
        "fi\n"
        f'exec {SYSTEM_PYTHON} "$@"\n'
    )
    fake.chmod(0o755)
    result = _run(project, str(fake), "-s", "hello")
    assert result.returncode == 0, result.stderr
    assert "making a venv without pip" in result.stderr and "hello" in result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "sh tools/nox.sh -t tests" in readme and "sh tools/nox.sh -s bench" in readme
    assert "sh tools/nox.sh -t tests" in ci
