#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m pytest -n 2 --dist loadgroup -q "$@"
