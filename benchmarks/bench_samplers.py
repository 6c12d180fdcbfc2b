#!/usr/bin/env python
"""Sample quality against NFE for the fixed-grid samplers of an image run, next to PC and the adaptive ODE.

    python benchmarks/bench_samplers.py RUN_DIR [--n-samples 500] [--nfes 10,20,35,50,100,200]
        [--samplers euler,heun,dpmpp_2m,dpm3,edm,euler_ancestral] [--pc-steps 100] [--ode-tol 1e-3]
        [--jsonl OUT.jsonl] [--plot OUT.png]

The sweep of ``lcssm reproduce samplers`` (:mod:`lcssm.reproduce.samplers`) on a run of your own. Each point is one
``lcssm fid RUN_DIR`` (digits runs: digits-FID; the same seed and sample count for every sampler), appended to
``--jsonl`` as it finishes; a rerun skips the points already there with the same request (give a new file after
retraining the run). The markdown table (FID, NFE, ms per sample)
is printed at the end and the plot of FID against NFE written to ``--plot``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--nfes", default="10,20,35,50,100,200")
    p.add_argument("--samplers", default="euler,heun,dpmpp_2m,dpm3,edm,euler_ancestral")
    p.add_argument("--schedule", default="karras")
    p.add_argument("--pc-steps", type=int, default=None, help="default: the run's own; 0: no PC point")
    p.add_argument("--ode-tol", default="1e-3", help="comma-separated ODE tolerances (rtol = atol); empty: none")
    p.add_argument("--jsonl", default="bench_samplers.jsonl")
    p.add_argument("--plot", default="bench_samplers.png")
    args = p.parse_args(argv)

    from lcssm.reproduce.samplers import plot_fid_against_nfe, sweep, sweep_points, verdict

    points = sweep_points(tuple(args.samplers.split(",")), tuple(int(v) for v in args.nfes.split(",")),
                          args.pc_steps, tuple(float(v) for v in args.ode_tol.split(",") if v), args.schedule)
    records = sweep(Path(args.run_dir), points, Path(args.jsonl), n_samples=args.n_samples,
                    batch_size=args.n_samples)
    print("| sampler | NFE | FID | KID | ms / sample |\n|---|---|---|---|---|")
    for r in records:
        print(f"| {r['sampler']} | {r['nfe']:.0f} | {r['fid']:.1f} | {r['kid']:.1f} | "
              f"{1000 * r['sample_seconds'] / r['n']:.1f} |")
    print("\n".join(verdict(records)))
    plot_fid_against_nfe(Path(args.plot), records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
