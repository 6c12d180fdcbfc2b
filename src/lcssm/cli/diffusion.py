"""``lcssm train`` / ``lcssm sample`` / ``lcssm bpd``: argument parsing for score-based diffusion.

Point data run through :mod:`lcssm.experiments.diffusion`. Image models go through :mod:`lcssm.cli.images`,
which adds ``--preset NAME`` (and the image options) to ``train``; a run started with a preset, and
``sample``/``bpd`` on a run directory whose config says it is an image run
(:func:`lcssm.experiments.images.is_image_run`), are handed to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lcssm.cli import HelpFormatter, images
from lcssm.config import apply_overrides, train_overrides_from_args
from lcssm.errors import ConfigError
from lcssm.experiments.diffusion import (
    SAMPLERS,
    TRACES,
    DiffusionConfig,
    run_bpd,
    run_sample,
    run_train,
)
from lcssm.sampling import CORRECTORS, PREDICTORS

# -------------------------------------------------------------------------------------------- argparse
#: options of the point-data ``train`` (config field names) and of ``sample`` (SampleConfig field names)
_POINT_KEYS = ("data", "sde", "sigma_min", "sigma_max", "beta_min", "beta_max", "sigma_s", "hidden")
_SHARED_KEYS = ("objective", "center", "weighting", "gamma", "antithetic", "n_noise")
_SAMPLE_KEYS = ("sampler", "n", "n_steps", "predictor", "corrector", "snr", "n_corrector_steps", "eps", "denoise",
                "rtol", "atol", "ald_steps_each", "ald_step_size", "seed", "batch_size")


def register(sub: argparse._SubParsersAction) -> None:
    from lcssm.config import add_train_args
    from lcssm.data.toy import TOY_DATASETS
    from lcssm.diffusion import CENTERS, WEIGHTINGS
    from lcssm.objectives import OBJECTIVES
    from lcssm.sde import SDES

    fmt = HelpFormatter
    p = sub.add_parser(
        "train", formatter_class=fmt,
        help="train a score-based diffusion model on point data (then sample it), or an image model (--preset)",
        description="Train a time-conditional score model on a toy distribution or a point file with any objective "
        "(paper Sec. 3.2), then sample it. Writes config.json, loss.csv, metrics.jsonl, checkpoints/, "
        "metrics.json, loss.png, samples.npy and, for 2-D data, samples.png. --set KEY=VALUE reaches every config "
        "field (e.g. sample.n_steps=200, train.warmup=100, n_sim_steps=50)."
        + " With --preset NAME it trains an image model instead (see the image options).")
    g = p.add_argument_group("point data")
    g.add_argument("--data", help=f"toy distribution ({', '.join(TOY_DATASETS)}) or a .npy/.csv file of shape "
                   "(n, d); use data of roughly unit scale (default: checkerboard)")
    g.add_argument("--sde", help=f"forward SDE: {', '.join(SDES)} (tanh: non-affine, needs --center simulated; "
                   "default: vp)")
    g.add_argument("--sigma-min", type=float, help="VE sigma_min (default: the SDE's)")
    g.add_argument("--sigma-max", type=float, help="VE sigma_max (default: the SDE's)")
    g.add_argument("--beta-min", type=float, help="VP/subVP/tanh beta_min (default: the SDE's)")
    g.add_argument("--beta-max", type=float, help="VP/subVP/tanh beta_max (default: the SDE's)")
    g.add_argument("--objective", help=f"score-matching objective: {', '.join(OBJECTIVES)} (default: lcss)")
    g.add_argument("--center", help=f"Stein/denoising kernel center: {', '.join(CENTERS)} (default: marginal)")
    g.add_argument("--weighting", help=f"lambda(t): {', '.join(WEIGHTINGS)} (default: sigma2)")
    g.add_argument("--sigma-s", type=float, help="smoothing std of the simulated center (default: 0.05)")
    g.add_argument("--gamma", type=float, help="LCSS gamma (Eq. 21; default: 1)")
    g.add_argument("--antithetic", action="store_true", default=None, help="LCSS with antithetic pairs z, -z")
    g.add_argument("--n-noise", type=int, help="LCSS noise draws / SSM, FD-SSM slices per point (default: 1)")
    g.add_argument("--hidden", type=int, help="hidden width of the score MLP (default: 256)")
    g.add_argument("--sampler", help=f"sampler run after training: {', '.join(SAMPLERS)} (default: pc)")
    g.add_argument("--n-samples", type=int, help="samples drawn after training, 0 = none (default: 2000)")
    add_train_args(p, DiffusionConfig().train)
    images.add_image_train_args(p)  # --preset and the image options; shared options are kept from above
    p.add_argument("--out", default="runs/diffusion", help="run directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_train_cmd)

    s = sub.add_parser(
        "sample", formatter_class=fmt, help="sample a trained diffusion run",
        description="Draw samples from the EMA model of a run's newest good checkpoint; for point data writes "
        "samples.npy (float32 (n, d)), samples.png for 2-D data, and appends a record to metrics.json (sampler, NFE, "
        "seconds, energy distance to the data and its two-sample floor). Options left out keep the run's sample "
        "settings. Image runs are handed to the image sampler.")
    s.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by lcssm train")
    s.add_argument("--sampler", help=f"{', '.join(SAMPLERS)} (ald = annealed Langevin over sigma_t/alpha_t)")
    s.add_argument("--n", type=int, help="number of samples")
    s.add_argument("--steps", type=int, dest="n_steps", help="pc: predictor steps; ald: noise levels")
    s.add_argument("--predictor", help=f"pc predictor: {', '.join(PREDICTORS)}")
    s.add_argument("--corrector", help=f"pc corrector: {', '.join(CORRECTORS)}")
    s.add_argument("--snr", type=float, help="pc Langevin corrector signal-to-noise ratio")
    s.add_argument("--corrector-steps", type=int, dest="n_corrector_steps", help="pc corrector steps per step")
    s.add_argument("--eps", type=float, help="final time")
    s.add_argument("--no-denoise", dest="denoise", action="store_const", const=False, help="skip the final denoising")
    s.add_argument("--rtol", type=float, help="ode relative tolerance")
    s.add_argument("--atol", type=float, help="ode absolute tolerance")
    s.add_argument("--ald-steps-each", type=int, help="ald Langevin steps per noise level")
    s.add_argument("--ald-step-size", type=float, help="ald step size eps (NCSNv2 step_lr)")
    s.add_argument("--batch-size", type=int, help="samples per sampler call (points: 0 = all at once)")
    s.add_argument("--seed", type=int, help="sampling seed")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--out", help="samples file (default: RUN_DIR/samples.npy)")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    s.set_defaults(func=_sample_cmd)

    b = sub.add_parser(
        "bpd", formatter_class=fmt, help="probability-flow log-likelihood (bits/dim) of a trained diffusion run",
        description="Negative log-likelihood of data points under a run's EMA model through the probability-flow "
        "ODE (Song et al. 2021, App. D.2), in nats per point and bits per dimension; appended to metrics.json. "
        "Image runs are handed to the image evaluation (dequantized bits/dim).")
    b.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by lcssm train")
    b.add_argument("--data", help="toy distribution or point file (default: the run's data); image runs: data dir")
    b.add_argument("--n", type=int, help="number of data points (default: 1000; image runs: the whole test split)")
    b.add_argument("--trace", default="auto", help=f"divergence: {', '.join(TRACES)} (auto: exact for d <= 16)")
    b.add_argument("--batch", type=int, default=500, help="points per ODE solve")
    b.add_argument("--eps", type=float, default=1e-5, help="start time of the ODE")
    b.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    b.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance")
    b.add_argument("--seed", type=int, default=0, help="seed of the data draw and the Hutchinson noise")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.set_defaults(func=_bpd_cmd)


def _given(args: argparse.Namespace, names) -> list[str]:
    return [n for n in names if getattr(args, n, None) is not None]


def config_from_args(args: argparse.Namespace) -> DiffusionConfig:
    """Defaults, then explicit options, then ``--set`` overrides; validated by the dataclasses."""
    overrides = train_overrides_from_args(args, "train.", include_set=False)
    overrides += [f"{k}={getattr(args, k)}" for k in _given(args, _POINT_KEYS + _SHARED_KEYS)]
    if args.sampler is not None:
        overrides.append(f"sample.sampler={args.sampler}")
    if args.n_samples is not None:
        overrides.append(f"sample.n={args.n_samples}")
    return apply_overrides(DiffusionConfig(), overrides + list(getattr(args, "set", None) or []))


def _print(result: dict, where: str) -> None:
    json.dump(result, sys.stdout, indent=2)
    print(f"\nwrote {where}", file=sys.stderr)


def _train_cmd(args: argparse.Namespace) -> int:
    if getattr(args, "preset", None) is not None:
        point_only = _given(args, _POINT_KEYS + ("sampler", "n_samples"))
        if point_only:
            raise ConfigError(f"--{point_only[0].replace('_', '-')} applies to point data, not to --preset "
                              f"{args.preset} (image presets fix it; see lcssm train --help)")
        return images.train_command(args)
    image_only = [k for k in vars(args) if k in _IMAGE_ONLY]
    if image_only:
        raise ConfigError(f"--{image_only[0].replace('_', '-')} is an image option; it needs --preset NAME")
    cfg = config_from_args(args)
    metrics = run_train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if metrics is not None:  # None on non-zero ranks under torchrun
        _print(metrics, args.out)
    return 0


_IMAGE_ONLY = frozenset({"data_dir", "resolution", "channels", "nf", "random_flip", "holdout", "strict", "cache_dir",
                         "sample_every", "n_grid", "grid_steps"})


def _sample_cmd(args: argparse.Namespace) -> int:
    from lcssm.experiments.images import is_image_run  # not at import: start-up stays free of the image stack

    if is_image_run(args.run_dir):
        return images.sample_command(args)
    overrides = [f"{k}={getattr(args, k)}" for k in _given(args, _SAMPLE_KEYS)]
    info = run_sample(args.run_dir, overrides, device=args.device, progress=not args.no_progress,
                      samples_path=args.out)
    _print(info, args.out or str(Path(args.run_dir) / "samples.npy"))
    return 0


def _bpd_cmd(args: argparse.Namespace) -> int:
    from lcssm.experiments.images import is_image_run  # not at import: start-up stays free of the image stack

    if is_image_run(args.run_dir):
        return images.bpd_command(args)
    info = run_bpd(args.run_dir, data=args.data, n=1000 if args.n is None else args.n, trace=args.trace,
                   batch=args.batch, eps=args.eps, rtol=args.rtol, atol=args.atol, seed=args.seed, device=args.device,
                   progress=not args.no_progress)
    _print(info, str(Path(args.run_dir) / "metrics.json"))
    return 0
