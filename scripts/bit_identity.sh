#!/usr/bin/env bash
# Side-by-side bit identity of two lcssm trees: the same commands (a toy run, a point run sampled by four samplers, a
# non-affine run, a tiny image run sampled by PC and Heun) under each, then the digests of every checkpoint's weights
# and optimizer state, loss log and sample array compared.
#   bash scripts/bit_identity.sh REV [OUT]      # REV: the commit to compare the working tree against (e.g. HEAD~1)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rev=${1:?usage: bit_identity.sh REV [OUT]}; out=${2:-$(mktemp -d)}
source "$root/scripts/setup.sh"
old="$out/tree-$rev"; rm -rf "$old"; mkdir -p "$old"; git -C "$root" archive "$rev" src | tar -x -C "$old"
runs() {  # runs SRC DIR
    local src=$1 dir=$2; rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && export PYTHONPATH=$src OMP_NUM_THREADS=1 && L="python -m lcssm" &&
     $L toy --data checkerboard --objective lcss --steps 300 --out toy --no-progress &&
     $L train --data 2spirals --sde subvp --objective lcss --steps 300 --n-samples 256 --out pts --no-progress &&
     for s in dpmpp_2m heun euler_ancestral; do $L sample pts --sampler $s --nfe 20 --n-samples 128 --no-progress; done &&
     $L sample pts --sampler pc --n-samples 128 --no-progress &&
     $L train --data 2spirals --sde tanh --center simulated --antithetic --steps 200 --n-samples 128 --out nonaff \
        --no-progress &&
     $L train --preset tiny --data digits --steps 40 --batch-size 16 --n-samples 16 --out img --no-progress &&
     $L sample img --sampler pc --n-samples 8 --n-steps 10 --no-progress &&
     $L sample img --sampler heun --nfe 9 --n-samples 8 --no-progress) > "$dir.log" 2>&1
    python "$root/scripts/run_digests.py" "$dir" > "$dir.digests"
}
runs "$old/src" "$out/before"
runs "$root/src" "$out/after"
if diff "$out/before.digests" "$out/after.digests"; then
    echo "bit-identical: $(wc -l < "$out/after.digests") files (weights, optimizer state, loss logs, samples)"
else
    echo "DIFFERENT (see above; logs in $out)"; exit 1
fi
