"""``lcssm toy``: density estimation on a toy distribution or a point file (paper App. B)."""

from __future__ import annotations

import argparse
import copy
import json
import sys

from lcssm.cli import HelpFormatter
from lcssm.objectives import OBJECTIVES


def register(sub: argparse._SubParsersAction) -> None:
    from lcssm.config import add_train_args
    from lcssm.data.toy import TOY_DATASETS
    from lcssm.experiments.toy import INITS, MODELS, TOY_PRESETS

    p = sub.add_parser(
        "toy",
        help="train an energy/score MLP on 2-D toy data or a point file and sample it with Langevin dynamics",
        description="Train a model on a toy distribution or a point file with any objective, sample it with "
        "Langevin dynamics (paper Eq. 31) and write samples.npy, metrics.json, loss.csv and, for 2-D data, "
        "samples.png, density.png and loss.png. Options left out take the preset's value.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", choices=list(TOY_PRESETS), default="quick",
                   help="quick: ~2 minutes on 2 cores; paper: App. B (batch 10k, 20k steps = 200 epochs of 1M "
                   "points, Langevin eps 0.1)")
    p.add_argument("--data", help=f"toy distribution ({', '.join(TOY_DATASETS)}) or a .npy/.csv file of shape (n, d)")
    p.add_argument("--objective", choices=list(OBJECTIVES), help="score-matching objective")
    p.add_argument("--model", choices=MODELS, help="energy: f(x) with score = grad f; score: direct score MLP")
    p.add_argument("--sigma", type=float, help="noise scale of lcss/dsm, and of the smoothed reference data")
    p.add_argument("--gamma", type=float, help="LCSS gamma (Eq. 21)")
    p.add_argument("--antithetic", action="store_true", default=None, help="LCSS with antithetic pairs z, -z")
    p.add_argument("--n-noise", type=int, help="LCSS noise samples / SSM, FD-SSM slices per data point")
    p.add_argument("--hidden", type=int, help="hidden width of the MLP (2 hidden layers for energy)")
    p.add_argument("--n-samples", type=int, help="number of Langevin samples")
    p.add_argument("--langevin-steps", type=int, help="Langevin steps")
    p.add_argument("--langevin-step-size", type=float, help="Langevin step size eps")
    p.add_argument("--init", choices=INITS, help="Langevin initialisation")
    add_train_args(p, TOY_PRESETS["quick"].train)
    p.add_argument("--out", default="runs/toy", help="run directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, preset):
    """Preset, then explicit options, then ``--set`` overrides; validated by the dataclasses."""
    from lcssm.config import apply_overrides, train_overrides_from_args

    overrides = train_overrides_from_args(args, "train.", include_set=False)
    for name in ("data", "objective", "model", "sigma", "gamma", "antithetic", "n_noise", "hidden", "n_samples",
                 "langevin_steps", "langevin_step_size", "init"):
        value = getattr(args, name, None)
        if value is not None:
            overrides.append(f"{name}={value}")
    return apply_overrides(copy.deepcopy(preset), overrides + list(getattr(args, "set", None) or []))


def run(args: argparse.Namespace) -> int:
    from lcssm.experiments.toy import TOY_PRESETS, run_toy

    cfg = config_from_args(args, TOY_PRESETS[args.preset])
    metrics = run_toy(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if metrics is None:  # a non-zero rank under torchrun
        return 0
    json.dump(metrics, sys.stdout, indent=2)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0
