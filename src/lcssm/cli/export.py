"""``lcssm export RUN_DIR``: the EMA weights of a run's newest good checkpoint as a safetensors file."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's EMA weights as safetensors",
        description="Write the EMA weights (the model weights for a run trained without EMA) of the newest good "
        "checkpoint in RUN_DIR as a safetensors file, with the run config (JSON) and step in its metadata. "
        "Load it without lcssm's trainer: model.load_state_dict(safetensors.torch.load_file(FILE)).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (holds checkpoints/)")
    p.add_argument("--file", metavar="FILE", help="output file (default: RUN_DIR/ema.safetensors)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing --file (never a run's config.json or checkpoints)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lcssm.training.checkpoint import export_ema

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    dest = export_ema(run_dir, args.file, overwrite=args.overwrite)
    print(f"wrote {dest}", file=sys.stderr)
    return 0
