#!/usr/bin/env bash
# Train an energy model on the checkerboard with LCSS and sample it (about 1.5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
lcssm toy --data checkerboard --objective lcss --out runs/demo --overwrite "$@"
echo "results in runs/demo (samples.png, density.png, loss.png, metrics.json)"
