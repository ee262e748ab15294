#!/usr/bin/env bash
# Sourced by the scripts in this folder: the repository root and the project's tools (.venv/bin first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# The project's venv first on PATH, so that what these scripts start (a Ray head and the `python` of the jobs
# submitted to it, moto) runs the project's pinned packages.
if [[ -d "$ROOT/.venv/bin" ]]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi

# tool NAME: the path of NAME in the project's venv if there is one, else on PATH; fails with a message.
tool() {
    if [[ -x "$ROOT/.venv/bin/$1" ]]; then
        echo "$ROOT/.venv/bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        echo "error: '$1' not found in $ROOT/.venv/bin or on PATH; run 'make install' first" >&2
        return 1
    fi
}
