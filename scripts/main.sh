#!/usr/bin/env bash
# The main job after set-up: `nlhf demo`, the paper's experiment end to end on the built-in task
# (under 15 minutes on two cores; --quick for a ~1 minute smoke run). Arguments go to `nlhf demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec "${NLHF_VENV:-$root/.venv}/bin/nlhf" demo "$@"
