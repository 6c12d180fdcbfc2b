#!/usr/bin/env python
"""Sample quality against NFE for the fixed-grid samplers of an image run, next to PC and the adaptive ODE.

    python benchmarks/bench_samplers.py RUN_DIR [--n-samples 500] [--nfes 10,20,35,50,100,200]
        [--samplers euler,heun,dpmpp_2m,dpm3,edm,euler_ancestral] [--pc-steps 100] [--ode-tol 1e-3]
        [--jsonl OUT.jsonl] [--plot OUT.png]

Each point is one ``lcssm fid RUN_DIR`` (digits runs: digits-FID; the same seed and sample count for every
sampler). Rows are appended to ``--jsonl`` as they finish (a stopped run keeps its rows; ``--resume`` skips the rows
already there); the markdown table (FID, NFE, seconds per sample) is printed at the end and the plot of FID
against NFE written to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows(args) -> list[tuple[str, dict]]:
    rows = []
    for name in args.samplers.split(","):
        for nfe in (int(v) for v in args.nfes.split(",")):
            rows.append((f"{name}@{nfe}", {"name": name, "nfe": nfe, "schedule": args.schedule}))
    if args.pc_steps:
        rows.append((f"pc@{args.pc_steps}", {"name": "pc", "n_steps": args.pc_steps, "snr": 0.16}))
    for tol in (float(v) for v in args.ode_tol.split(",") if v):
        rows.append((f"ode@{tol:g}", {"name": "ode", "rtol": tol, "atol": tol}))
    return rows


def _table(records: list[dict]) -> str:
    lines = ["| sampler | NFE | digits-FID | KID | s / sample |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['key']} | {r['nfe']:.0f} | {r['fid']:.1f} | {r['kid']:.1f} | "
                     f"{r['sample_seconds'] / r['n']:.3f} |")
    return "\n".join(lines)


def _plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    by_name: dict[str, list[dict]] = {}
    for r in records:
        by_name.setdefault(r["sampler"], []).append(r)
    for name, rs in by_name.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        style = "o-" if len(rs) > 1 else "s"
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], style, label=name)
    ax.set(xscale="log", xlabel="NFE per sample", ylabel="digits-FID", title="sample quality against NFE")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--nfes", default="10,20,35,50,100,200")
    p.add_argument("--samplers", default="euler,heun,dpmpp_2m,dpm3,edm,euler_ancestral")
    p.add_argument("--schedule", default="karras")
    p.add_argument("--pc-steps", type=int, default=100, help="0: no PC row")
    p.add_argument("--ode-tol", default="1e-3", help="comma-separated ODE tolerances (rtol = atol); empty: none")
    p.add_argument("--jsonl", default="bench_samplers.jsonl")
    p.add_argument("--plot", default="bench_samplers.png")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    from lcssm.experiments.fid import fid_run

    out = Path(args.jsonl)
    done = {}
    if args.resume and out.exists():
        done = {r["key"]: r for r in map(json.loads, out.read_text().splitlines())}
    records = []
    for key, overrides in _rows(args):
        if key not in done:
            rec = fid_run(args.run_dir, {"n_samples": args.n_samples, "batch_size": args.n_samples, **overrides})
            done[key] = {"key": key, **{k: rec[k] for k in ("sampler", "fid", "kid", "nfe", "n", "sample_seconds")}}
            with out.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
            print(key, f"FID {rec['fid']:.1f}", f"NFE {rec['nfe']:.0f}", flush=True)
        records.append(done[key])
    print(_table(records))
    _plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
