#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# one thread per worker, also for the subprocesses the tests start (torchrun, killed-and-resumed runs)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -n 2 --dist loadgroup -q "$@"
