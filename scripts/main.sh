#!/usr/bin/env bash
# The main job on its built-in default, after set-up. Extra arguments go to the command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec "${NLHF_VENV:-$root/.venv}/bin/nlhf" tabular "$@"
