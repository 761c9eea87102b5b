"""The README's install lines work as written from a fresh clone (the block after ``<!-- install-test: clone -->``).

Like the README's two commands (``test_bootstrap_nox.py``) they run with the registry the machine
reaches: the clone is made from this repository's committed files, the core install (``pip install -e .``)
really installs and imports, and the PyTorch line is resolved with ``pip install --dry-run`` (the
full torch download is several GB). The CPU-only line's index is not a package registry this
machine reaches, so that line is only checked for the extra's torch bounds.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- install-test: clone -->\s*```bash\n(.*?)```", re.DOTALL)

# Where pdmp was imported from, and which frameworks `import pdmp` pulled in (none).
PROBE = "import sys, pdmp; print(pdmp.__file__); print(sorted(set(sys.modules) & {'torch', 'tensorflow', 'jax'}))"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _install_lines() -> list[str]:
    (block,) = BLOCK.findall((ROOT / "README.md").read_text("utf-8"))
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def test_the_block_is_clone_cpu_torch_then_the_extra() -> None:
    clone, cpu, extra = _install_lines()
    assert clone.startswith("git clone ") and clone.endswith("&& cd pdmp")
    assert cpu.startswith("pip install ") and "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert extra == 'pip install -e ".[torch]"'
    # The CPU-only torch must satisfy the extra's bounds, or the extra would replace it with PyPI's CUDA build.
    bounds = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["torch"][0]
    assert shlex.split(cpu)[2] == bounds.replace(" ", "")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("fresh")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where / "pdmp")], check=True, timeout=300)
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(where / "venv")], check=True, timeout=300)
    return where / "pdmp", where / "venv" / "bin" / "python"


def test_core_install_from_a_fresh_clone(clone: tuple[Path, Path]) -> None:
    repo, python = clone
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", "."], cwd=repo, check=True, timeout=900)
    out = subprocess.run(
        [str(python), "-c", PROBE],
        cwd="/", capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0].startswith(str(repo)) and out[1] == "[]"


def test_the_torch_line_resolves_from_a_fresh_clone(clone: tuple[Path, Path]) -> None:
    repo, python = clone
    extra = _install_lines()[2]
    args = shlex.split(extra)[1:]  # drop "pip"
    result = subprocess.run(
        [str(python), "-m", "pip", args[0], "--dry-run", "--quiet", "--report", "-", *args[1:]],
        cwd=repo, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "torch"' in result.stdout and '"name": "torchaudio"' in result.stdout


def test_the_git_url_form_resolves(clone: tuple[Path, Path]) -> None:
    """``pip install "pdmp[torch] @ git+<repository URL>"``, with the fresh clone as the repository."""
    repo, python = clone
    readme = (ROOT / "README.md").read_text("utf-8")
    assert 'pip install "pdmp[torch] @ git+<repository URL>"' in readme
    result = subprocess.run(
        # file://localhost/: the pip that `python3 -m venv` brings rejects a git+file URL without a host.
        [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", f"pdmp[torch] @ git+file://localhost{repo}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "pdmp"' in result.stdout and '"name": "torch"' in result.stdout
