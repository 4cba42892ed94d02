#!/usr/bin/env bash
# The README's test command, and what CI runs after installing the project: installs what the tests need
# beyond pip (Debian's chromium, driven by the page test through Playwright), then the fast test set.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "scripts/test.sh: $PY not found; install first: python3 -m venv .venv && .venv/bin/pip install -e '.[all]'" >&2
    exit 2
fi
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then SUDO="sudo"; else
            echo "scripts/test.sh: /usr/bin/chromium is missing and this user cannot install it; run as root: apt-get install chromium" >&2
            exit 2
        fi
    fi
    echo "scripts/test.sh: installing Debian's chromium for the page test" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
exec "$PY" -m pytest -q "$@"
