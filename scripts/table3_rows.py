#!/usr/bin/env python
"""Measure chosen rows of the Table 3 analogue (`lcssm reproduce table3`) into its output directory.

    python scripts/table3_rows.py dsm fdssm --out runs/table3 [--quick | --smoke] [--seed S] [--threads N]

Each row (train the `mnist` preset with one objective, draw PC samples, score real-Inception FID / KID against the
held-out digits, test bits/dim) is kept in `OUT/rows/OBJ.json`, exactly as the target keeps it, and read again
by `lcssm reproduce table3 --out OUT` with the same size and seed, which then adds the floor and writes the
report. The full table takes hours of a CPU (docs/MNIST.md); this splits it across sessions, in any order. Rows
already kept for the same request are read, not measured again; a row's `OUT/runs/OBJ` holding a finished run of
its spec is sampled without retraining, and one stopped mid-training (Ctrl-C, SIGTERM) resumes from its newest
checkpoint when the same command is run again. Needs the `fid` and `mnist` extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from lcssm.reproduce.table3 import ROWS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("objectives", nargs="+", choices=ROWS, metavar="ROW",
                   help=f"rows to measure, in this order: {', '.join(ROWS)} (OBJ-SDE: that objective with another "
                        "SDE family)")
    p.add_argument("--out", required=True, help="the target's output directory (rows in OUT/rows, runs in OUT/runs)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="the target's --quick")
    size.add_argument("--smoke", dest="size", action="store_const", const="smoke", help="the target's --smoke")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lcssm.cli import USER_ERRORS
    from lcssm.reproduce import Context, TargetUnavailable
    from lcssm.reproduce.table3 import measure_rows

    try:
        ctx = Context(out_dir=args.out, size=args.size or "full", seed=args.seed, device=args.device, progress=True)
        began = time.perf_counter()
        rows = measure_rows(ctx, args.objectives)
    except (TargetUnavailable, *USER_ERRORS) as e:
        print(f"table3_rows: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # 130 / 143 when a signal stopped training
    for obj, r in rows.items():
        summary = {"diverged": r["diverged"]} if "diverged" in r else {
            "s_per_step": round(r["seconds_per_step"], 4), "fid": round(r["fid"]["fid"], 3),
            "bpd": round(r["bpd"]["bpd"], 4), "minutes": round(r["minutes"], 1)}
        print(f"{obj}: {json.dumps(summary)}" + (" (read from OUT/rows)" if r["reused"] else ""))
    print(f"{len(rows)} row(s) in {(time.perf_counter() - began) / 60:.1f} minutes; kept in {ctx.out_dir / 'rows'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
