#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, format check, pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${NLHF_VENV:-$root/.venv}"
"$venv/bin/ruff" check src tests benchmarks
"$venv/bin/ruff" format --check src tests benchmarks
"$venv/bin/python" -m pytest -q "$@"
