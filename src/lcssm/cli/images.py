"""``lcssm fid RUN_DIR``: FID / KID / IS of an image run's samples.

Also the image half of ``lcssm train --preset NAME``, ``lcssm sample RUN_DIR`` and ``lcssm bpd RUN_DIR``, whose
parsers live in :mod:`lcssm.cli.diffusion`: :func:`add_image_train_args` adds the image options to its ``train``
parser, and :func:`train_command`, :func:`sample_command` and :func:`bpd_command` run the image case (route there
when ``args.preset`` is given, or when :func:`lcssm.experiments.images.is_image_run` says RUN_DIR is an image run).
"""

from __future__ import annotations

import argparse
import json
import sys

from lcssm.cli import HelpFormatter

SAMPLERS = ("pc", "ode", "ald")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid",
        help="FID / KID / IS of an image run's samples",
        description="Draw --n samples from the newest good checkpoint of an image run and score them against its "
        "training images: FID, KID (mean, std over 100 subsets) and IS. Digits runs use lcssm's digits "
        "classifier (digits-FID); other runs need the FID Inception-v3 weights file "
        "(pt_inception-2015-12-05-6726825d.pth; --inception PATH or $LCSSM_INCEPTION_WEIGHTS), never downloaded. "
        "Writes RUN_DIR/fid_samples_SAMPLER.npz and .png, appends the result to RUN_DIR/metrics.json and prints "
        "it as JSON.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by lcssm train --preset NAME")
    p.add_argument("--n", type=int, default=2000, help="number of samples")
    p.add_argument("--sampler", choices=SAMPLERS, default="pc",
                   help="pc: predictor-corrector; ode: probability-flow ODE (RK45); ald: annealed Langevin (VE)")
    p.add_argument("--steps", type=int, dest="n_steps", help="pc steps / ald noise levels (default: the preset's "
                   "num_scales)")
    p.add_argument("--rtol", type=float, default=1e-5, help="ode sampler relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="ode sampler absolute tolerance")
    p.add_argument("--inception", metavar="PATH", help="FID Inception-v3 weights file (non-digits runs)")
    p.add_argument("--batch-size", type=int, default=500, help="sampling batch size")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=fid_command)


def _sampler_kwargs(args: argparse.Namespace) -> dict:
    """The ODE tolerances given on the command line (sample and fid name them --rtol / --atol)."""
    return {k: getattr(args, k) for k in ("rtol", "atol") if getattr(args, k, None) is not None}


def _print(record: dict, what: str) -> int:
    json.dump(record, sys.stdout, indent=2)
    print(f"\n{what}", file=sys.stderr)
    return 0


def fid_command(args: argparse.Namespace) -> int:
    from lcssm.experiments.images import fid_image_run

    record = fid_image_run(args.run_dir, n=args.n, sampler=args.sampler, inception_path=args.inception,
                           batch_size=args.batch_size, seed=args.seed, n_steps=args.n_steps, device=args.device,
                           progress=not args.no_progress, **_sampler_kwargs(args))
    return _print(record, f"{record['features']} FID {record['fid']:.4g}, KID {record['kid']:.4g}; "
                  f"samples in {record['file']}")


# ----------------------------------------------------------------------- glue for lcssm.cli.diffusion
def _add(group: argparse._ActionsContainer, *flags: str, **kwargs) -> None:
    """Add an option unless the parser already has it (the point-data ``train`` shares objective options)."""
    try:
        group.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
    except argparse.ArgumentError:
        pass


def add_image_train_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``lcssm train --preset NAME`` (all optional; absent ones take the preset's value)."""
    from lcssm.diffusion import CENTERS, WEIGHTINGS
    from lcssm.models import MODEL_PRESETS
    from lcssm.objectives import OBJECTIVES

    g = parser.add_argument_group("image models (--preset)")
    _add(g, "--preset", choices=list(MODEL_PRESETS), metavar="NAME",
         help="train an image model with a preset's network, SDE and training settings: "
         f"{', '.join(MODEL_PRESETS)} (digits and tiny train on the bundled 8x8 digits, the paper's presets "
         "need --data-dir)")
    _add(g, "--data-dir", metavar="DIR",
         help="image folder or extracted cifar-10-batches-py (required unless the preset trains on digits)")
    _add(g, "--resolution", type=int, help="image size (default: the preset's)")
    _add(g, "--channels", type=int, choices=(1, 3), help="image channels (default: the preset's)")
    _add(g, "--nf", type=int, help="base width of the network (default: the preset's)")
    _add(g, "--random-flip", action=argparse.BooleanOptionalAction, help="horizontal flips (default: the preset's)")
    _add(g, "--holdout", type=float, help="fraction of an image folder held out for bpd (default 0.05)")
    _add(g, "--strict", action="store_true",
         help="an unreadable image file is an error (default: skipped with a warning naming it)")
    _add(g, "--cache-dir", metavar="DIR",
         help="decode an image folder once into a memory-mapped file in DIR, shared by all ranks and later runs "
         "(for folders too large to hold in memory once per process; default: decode into memory)")
    _add(g, "--sample-every", type=int, help="steps between sample grids in OUT/grids (0 = none; default 1000)")
    _add(g, "--n-grid", type=int, help="images per sample grid (default 64)")
    _add(g, "--grid-steps", type=int, help="PC steps of the grid sampler (default 100)")
    _add(g, "--objective", choices=list(OBJECTIVES), help="score-matching objective (default lcss)")
    _add(g, "--center", choices=list(CENTERS), help="Stein / denoising kernel center (default marginal)")
    _add(g, "--weighting", choices=list(WEIGHTINGS), help="time weighting λ(t) (default: the preset's)")
    _add(g, "--gamma", type=float, help="LCSS gamma (Eq. 21)")
    _add(g, "--antithetic", action="store_true", help="LCSS with antithetic pairs z, -z")
    _add(g, "--n-noise", type=int, help="LCSS noise samples / SSM, FD-SSM slices per image")


_CONFIG_OPTIONS = ("objective", "center", "weighting", "gamma", "antithetic", "n_noise", "data_dir", "resolution",
                   "channels", "nf", "random_flip", "holdout", "strict", "cache_dir", "sample_every", "n_grid",
                   "grid_steps")


def image_config_from_args(args: argparse.Namespace):
    """The preset's config, then the explicit options, the trainer options and ``--set`` overrides."""
    from lcssm.config import apply_overrides, train_overrides_from_args
    from lcssm.experiments.images import ImageRunConfig

    fields = {k: getattr(args, k) for k in _CONFIG_OPTIONS if getattr(args, k, None) is not None}
    cfg = ImageRunConfig(preset=args.preset, **fields)
    overrides = train_overrides_from_args(args, "train.", include_set=False) + list(getattr(args, "set", None) or [])
    return apply_overrides(cfg, overrides)


def train_command(args: argparse.Namespace) -> int:
    """``lcssm train --preset NAME ...`` (args also need ``out``, ``resume``, ``overwrite``, ``no_progress``)."""
    from lcssm.experiments.images import train_image

    cfg = image_config_from_args(args)
    result = train_image(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                         progress=not getattr(args, "no_progress", False))
    if result is None:  # a non-zero rank under torchrun
        return 0
    return _print({"preset": cfg.preset, "objective": cfg.objective, "steps": result.steps,
                   "train_seconds": result.train_seconds, "final_loss": result.final_loss,
                   "checkpoint": str(result.checkpoint)}, f"wrote {args.out}")


def _get(args: argparse.Namespace, *names: str, default=None):
    """The first of ``names`` that the namespace holds with a value, else ``default``."""
    return next((getattr(args, n) for n in names if getattr(args, n, None) is not None), default)


def sample_command(args: argparse.Namespace) -> int:
    """``lcssm sample RUN_DIR`` for an image run. Reads, where present: run_dir, sampler, n, n_steps, batch_size,
    seed, rtol, atol, out (a .npz path), device, no_progress, and the sampler options predictor, corrector, snr,
    n_corrector_steps, denoise, eps, ald_steps_each, ald_step_size (absent or None: the preset's)."""
    from lcssm.experiments.images import SAMPLER_OPTIONS, sample_image_run

    options = {k: getattr(args, k) for k in SAMPLER_OPTIONS if getattr(args, k, None) is not None}
    record = sample_image_run(args.run_dir, sampler=_get(args, "sampler", default="pc"), n=_get(args, "n", default=64),
                              batch_size=_get(args, "batch_size", default=500), seed=_get(args, "seed", default=0),
                              n_steps=_get(args, "n_steps", "steps"), out=_get(args, "out"),
                              device=_get(args, "device", default="auto"),
                              progress=not getattr(args, "no_progress", False), **_sampler_kwargs(args), **options)
    return _print(record, f"wrote {record['file']} and {record['grid']}")


def bpd_command(args: argparse.Namespace) -> int:
    """``lcssm bpd RUN_DIR [--data-dir DIR]`` for an image run. Reads, where present: run_dir, data_dir (or data),
    n, seed, batch (or batch_size), rtol, atol, eps, trace (auto = rademacher), device, no_progress."""
    from lcssm.experiments.images import bpd_image_run

    trace = _get(args, "trace", default="rademacher")
    record = bpd_image_run(args.run_dir, data_dir=_get(args, "data_dir", "data"), n=_get(args, "n"),
                           seed=_get(args, "seed", default=0),
                           batch_size=_get(args, "batch", "batch_size", default=500),
                           eps=_get(args, "eps", default=1e-5), trace="rademacher" if trace == "auto" else trace,
                           device=_get(args, "device", default="auto"),
                           progress=not getattr(args, "no_progress", False), **_sampler_kwargs(args))
    return _print(record, f"{record['bpd']:.4f} ± {record['bpd_se']:.2g} bits/dim on {record['n']} images "
                  f"({record['data']})")
