#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, format check, pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${NLHF_VENV:-$root/.venv}"
# Tests never touch the network: every model, tokenizer and data set is built locally.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
"$venv/bin/ruff" check src tests benchmarks
"$venv/bin/ruff" format --check src tests benchmarks
"$venv/bin/python" -m pytest -q "$@"
