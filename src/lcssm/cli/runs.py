"""``lcssm toy | train | sample | bpd | fid``: thin wrappers over :mod:`lcssm.experiments.pipeline`.

Their flags are generated from the run spec's fields (:mod:`lcssm.cli.options`); ``--set section.field=VALUE``
reaches every field of the spec (``lcssm train --set objective.t_min=1e-4``), applied after the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from lcssm.cli.options import CommandOptions, add_options, apply_options, bindings
from lcssm.errors import ConfigError


def _set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="set any field of the run spec, e.g. --set train.warmup=100 --set objective.t_min=1e-4, or a "
                   "hyper-parameter of an image network, --set model.config.nf=64 (repeatable; applied after the "
                   "flags; the keys are those of the run's config.json)")


def _differences(base: Any, others: dict[str, Any], command: str) -> dict[str, str]:
    """``{key: "preset NAME: VALUE, ..."}`` for the flags of ``command`` whose value differs in another preset."""
    from lcssm.cli.options import default_text, lookup_field

    notes: dict[str, list[str]] = {}
    for name, other in others.items():
        for b in bindings(base, command):
            mine, theirs = lookup_field(base, b.key)[0], lookup_field(other, b.key)[0]
            if mine != theirs:
                notes.setdefault(b.key, []).append(f"{name}: {default_text(theirs)}")
    return {k: "with --preset " + ", ".join(v) for k, v in notes.items()}


def _print(result: dict, message: str) -> int:
    json.dump(result, sys.stdout, indent=2, default=str)
    print(f"\n{message}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------- toy
def _register_toy(sub: argparse._SubParsersAction) -> None:
    from lcssm.experiments.presets import TOY_PRESETS, ToyPreset, toy_spec

    p = sub.add_parser(
        "toy", help="density estimation: an energy/score MLP on 2-D toy data or a point file, Langevin sampling",
        description="Train a model on a toy distribution or a point file with any objective at one noise scale, "
        "sample it with Langevin dynamics (paper Eq. 31; App. B) and write config.json, loss.csv, checkpoints/, "
        "samples.npy, metrics.json and, for 2-D data, samples.png, density.png and loss.png.")
    base = toy_spec("quick")
    p.set_defaults(func=_toy, preset_flags=add_options(p, ToyPreset(), "toy"),
                   spec_flags=add_options(p, base, "toy", notes=_differences(
                       base, {n: toy_spec(n) for n in TOY_PRESETS if n != "quick"}, "toy")),
                   command_flags=add_options(p, CommandOptions(out="runs/toy"), "toy"))
    _set_option(p)


def _toy(args: argparse.Namespace) -> int:
    from lcssm.experiments.pipeline import train_run
    from lcssm.experiments.presets import ToyPreset, toy_spec

    preset = apply_options(ToyPreset(), args, args.preset_flags)
    arch = getattr(args, "model__arch", "energy_mlp")  # a score model samples by unadjusted Langevin
    spec = apply_options(toy_spec(preset.preset, arch if arch == "score_mlp" else "energy_mlp"), args,
                         args.spec_flags, with_set=True)
    cmd = apply_options(CommandOptions(out="runs/toy"), args, args.command_flags)
    metrics = train_run(spec, _out(cmd), resume=cmd.resume, overwrite=cmd.overwrite, progress=cmd.progress)
    return 0 if metrics is None else _print(metrics, f"wrote {cmd.out}")


def _out(cmd: CommandOptions) -> str:
    if not cmd.out:
        raise ConfigError("--out must name a directory")
    return cmd.out


# ------------------------------------------------------------------------------------------------- train
def _register_train(sub: argparse._SubParsersAction) -> None:
    from lcssm.experiments.presets import ImagePreset, image_spec, point_spec
    from lcssm.models import MODEL_PRESETS

    p = sub.add_parser(
        "train", help="train a score-based diffusion model on point data (then sample it), or an image model "
        "(--preset NAME)",
        description="Train a time-conditional score model with any objective (paper Sec. 3.2): on a toy "
        "distribution or a point file (then sample it), or with --preset NAME an image network on the bundled "
        f"digits, an image folder or CIFAR-10 batches (presets: {', '.join(MODEL_PRESETS)}). Writes config.json "
        "(the whole run spec), loss.csv, metrics.jsonl, checkpoints/, metrics.json and loss.png; point runs also "
        "samples.npy (and samples.png for 2-D data), image runs grids/step_*.png. Defaults shown are those of "
        "point data; --preset fills every field from the preset instead, and the flags change it from there.")
    base = point_spec()
    examples = {name: image_spec(ImagePreset(preset=name)) for name in ("digits", "mnist")}
    p.set_defaults(func=_train, preset_flags=add_options(p, ImagePreset(), "train", title="image models"),
                   spec_flags=add_options(p, base, "train", notes=_differences(base, examples, "train")),
                   command_flags=add_options(p, CommandOptions(out="runs/diffusion"), "train"))
    _set_option(p)


def _train(args: argparse.Namespace) -> int:
    from lcssm.experiments.pipeline import train_run
    from lcssm.experiments.presets import ImagePreset, image_spec, point_spec, with_sde
    from lcssm.sde import SDES

    preset = apply_options(ImagePreset(), args, args.preset_flags)
    kind = "points" if preset.preset is None else "images"
    flags = [(b, "images") for b in args.preset_flags] + [(b, b.data_kind) for b in args.spec_flags]
    wrong = [b.flag for b, only in flags if hasattr(args, b.dest) and only not in (None, kind)]
    if wrong:
        raise ConfigError(f"{wrong[0]} is an image option; it needs --preset NAME" if kind == "points" else
                          f"{wrong[0]} applies to point data, not to --preset {preset.preset} (see lcssm train --help)")
    if preset.preset is None:
        sde = getattr(args, "sde__name", "vp")  # the defaults that fit this SDE; a bad name fails in apply_options
        spec = apply_options(point_spec(sde if sde in SDES else "vp"), args, args.spec_flags, with_set=True)
    else:
        spec = image_spec(preset, getattr(args, "data__source", None))
        spec = with_sde(spec, getattr(args, "sde__name", spec.sde.name))  # another family at its own parameters
        spec = apply_options(spec, args, args.spec_flags, with_set=True)
    cmd = apply_options(CommandOptions(out="runs/diffusion"), args, args.command_flags)
    metrics = train_run(spec, _out(cmd), resume=cmd.resume, overwrite=cmd.overwrite, progress=cmd.progress)
    return 0 if metrics is None else _print(metrics, f"wrote {cmd.out}")


# ------------------------------------------------------------------------------------- sample / bpd / fid
def _sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{field: value}`` of the sampler fields given as flags (typed as argparse parsed them) and as ``--set
    sampler.FIELD=VALUE`` (coerced by :func:`lcssm.config.override_values`, the ``--set`` path of every command;
    a later one wins), for :func:`~lcssm.experiments.pipeline.sample_run` / :func:`~lcssm.experiments.fid.fid_run`,
    which apply them to the run's saved spec."""
    from lcssm.config import invalid, override_values, parse_override
    from lcssm.experiments.spec import RunSpec, SamplerSpec

    values = {b.key: getattr(args, b.dest) for b in args.sampler_flags if hasattr(args, b.dest)}
    items = getattr(args, "set", None) or []
    names = [f.name for f in dataclasses.fields(SamplerSpec)]
    for item in items:
        key = parse_override(item)[0]
        if key.removeprefix("sampler.") not in names or not key.startswith("sampler."):
            raise invalid(key, f"is not a sampler field; valid: {', '.join('sampler.' + k for k in names)}")
    typed = override_values(RunSpec(), items)  # the run spec's keys (the sampler's types), as in lcssm train --set
    values.update({key.removeprefix("sampler."): value for key, value in typed.items()})
    return values


def _register_sample(sub: argparse._SubParsersAction, name: str) -> None:
    from lcssm.experiments.spec import SamplerSpec

    fid = name == "fid"
    p = sub.add_parser(
        name, help="FID / KID / IS of an image run's samples" if fid else "sample a trained run",
        description=("Draw samples from the newest good checkpoint (or --step) of an image run and score them "
                     "against its training images (or --reference test): FID, KID (mean, std over 100 subsets) and "
                     "IS. Digits runs use lcssm's digits classifier (digits-FID); other runs need the FID "
                     "Inception-v3 weights file, never downloaded. Writes the samples to a new "
                     "RUN_DIR/fid/SAMPLER_NNN.npz with its .png grid." if fid else
                     "Draw samples from the EMA model of a run's newest good checkpoint (or --step): points to "
                     "samples.npy (and samples.png for 2-D data) with energy distance to the data, images to "
                     "samples.npz and a samples.png grid.") + " Options left out keep the run's saved sampler "
                     "settings; the record (sampler, its settings, NFE, seconds, ...) is appended to "
                     "RUN_DIR/metrics.json and printed.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by lcssm train or lcssm toy")
    p.set_defaults(func=_fid if fid else _sample,
                   sampler_flags=add_options(p, SamplerSpec(), name, default="the run's" + (", 2000 samples for "
                                                                                           "fid" if fid else "")),
                   command_flags=add_options(p, CommandOptions(), name))
    p.add_argument("--set", dest="set", action="append", default=argparse.SUPPRESS, metavar="sampler.FIELD=VALUE",
                   help="set any sampler field (repeatable)")


def _sample(args: argparse.Namespace) -> int:
    from lcssm.experiments.pipeline import sample_run

    cmd = apply_options(CommandOptions(), args, args.command_flags)
    record = sample_run(args.run_dir, _sampler_overrides(args), out=cmd.file, overwrite=cmd.overwrite,
                        device=cmd.device, progress=cmd.progress, step=cmd.step)
    also = record.get("grid") or record.get("figure")
    return _print(record, f"wrote {record['file']}" + (f" and {also}" if also else ""))


def _fid(args: argparse.Namespace) -> int:
    from lcssm.experiments.fid import fid_run

    cmd = apply_options(CommandOptions(), args, args.command_flags)
    record = fid_run(args.run_dir, _sampler_overrides(args), inception_path=cmd.inception, device=cmd.device,
                     progress=cmd.progress, convention=cmd.convention, step=cmd.step,
                     reference_split=cmd.reference, n_seeds=cmd.n_seeds)
    if cmd.n_seeds == 1:
        return _print(record, f"{record['features']} FID {record['fid']:.4g}, KID {record['kid']:.4g}; samples in "
                      f"{record['file']}")
    return _print(record, f"{record['features']} FID {record['fid']:.4g} ± {record['fid_sd']:.2g}, KID "
                  f"{record['kid']:.4g} ± {record['kid_sd']:.2g} (mean ± sd over sampler seeds "
                  f"{record['seeds'][0]}-{record['seeds'][-1]}); samples in {Path(record['file']).parent}")


def _register_bpd(sub: argparse._SubParsersAction) -> None:
    from lcssm.experiments.pipeline import LikelihoodOptions

    p = sub.add_parser(
        "bpd", help="probability-flow log-likelihood (bits/dim) of a trained diffusion run",
        description="Negative log-likelihood of held-out data under a run's EMA model through the probability-flow "
        "ODE (Song et al. 2021, App. D.2): points in nats per point and bits per dimension, images in dequantized "
        "bits/dim on the test split. Appended to RUN_DIR/metrics.json and printed.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by lcssm train")
    p.set_defaults(func=_bpd, bpd_flags=add_options(p, LikelihoodOptions(), "bpd"),
                   command_flags=add_options(p, CommandOptions(), "bpd"))


def _bpd(args: argparse.Namespace) -> int:
    from lcssm.experiments.pipeline import LikelihoodOptions, bpd_run

    cmd = apply_options(CommandOptions(), args, args.command_flags)
    options = apply_options(LikelihoodOptions(progress=cmd.progress), args, args.bpd_flags)
    record = bpd_run(args.run_dir, options, device=cmd.device, step=cmd.step)
    value = record.get("bpd", record.get("bits_per_dim"))
    return _print(record, f"{value:.4f} bits/dim on {record['n']} held-out examples ({record['data']})")


def register(sub: argparse._SubParsersAction) -> None:
    _register_toy(sub)
    _register_train(sub)
    _register_sample(sub, "sample")
    _register_bpd(sub)
    _register_sample(sub, "fid")
