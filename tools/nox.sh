#!/bin/sh
# Run nox from a private virtual environment (.venv-nox), so the same command works with a system
# Python that refuses `pip install` (PEP 668, "externally-managed-environment": Debian 12, Ubuntu 24.04),
# in a venv and in conda. Usage: sh tools/nox.sh -s bench | sh tools/nox.sh -t tests
# PYTHON picks the interpreter (default: python3).
set -eu
cd "$(dirname "$0")/.."
NOX_VERSION="2026.8.17"
VENV=".venv-nox"
PYTHON="${PYTHON:-python3}"

installed() {
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nox') != '$NOX_VERSION')" 2>/dev/null
}

if ! installed; then
    rm -rf "$VENV"
    if "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "nox==$NOX_VERSION"
    else
        # No ensurepip (Debian's python3 without python3-venv): a bare venv, filled by the system's pip.
        echo "tools/nox.sh: '$PYTHON -m venv' failed; making a venv without pip and installing nox with the system pip" >&2
        rm -rf "$VENV"
        "$PYTHON" -m venv --without-pip "$VENV"
        "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check "nox==$NOX_VERSION"
    fi
fi
exec "$VENV/bin/python" -m nox "$@"
