#!/usr/bin/env python
"""The closing table of the image-diffusion issue: the ``digits`` preset trained with lcss, dsm, ssm_vr and fdssm
(same network, steps, seed and data order), each measured for seconds per training step, test bits/dim and the
digits-FID / KID of 2,000 samples from the PC sampler and from the probability-flow ODE.

Writes ``DOCS/DIGITS.md`` (the table, the settings, the machine, the wall time) and one sample grid per objective
``DOCS/digits/<objective>.png`` (the first 64 PC samples); the runs and ``results.json`` go to ``--out``.

    python scripts/digits_table.py                      # the documented table (~35-40 minutes on 2 idle cores)
    python scripts/digits_table.py --steps 5 --n-samples 50 --pc-steps 5 --bpd-images 8 \\
        --out /tmp/dt --docs /tmp/dt/docs               # a smoke run of the whole pipeline (about a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcssm.experiments.images import (
    ImageRunConfig,
    bpd_image_run,
    feature_extractor,
    fid_image_run,
    image_quality,
    load_split,
    preset_train_config,
    save_image_grid,
    train_image,
)

OBJECTIVES = ("lcss", "dsm", "ssm_vr", "fdssm")
PRESET = "digits"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=500,
                   help="training steps per objective (the preset's own 4000 take over an hour for the four on 2 "
                   "cores, before evaluation)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated objectives")
    p.add_argument("--n-samples", type=int, default=2000, help="samples per sampler for FID/KID")
    p.add_argument("--pc-steps", type=int, default=100, help="PC sampler steps (the preset's num_scales is 1000)")
    p.add_argument("--ode-tol", type=float, default=1e-3,
                   help="rtol = atol of the sampling ODE (RK45; 1e-5 costs about 5x the evaluations)")
    p.add_argument("--bpd-images", type=int, default=360, help="test digits for bits/dim (the test split has 360)")
    p.add_argument("--bpd-tol", type=float, default=1e-4,
                   help="rtol = atol of the likelihood ODE (RK45; 1e-5 costs about 3x and moved bits/dim by < 0.01)")
    p.add_argument("--sample-batch", type=int, default=500, help="sampling batch size (one ODE solve per batch)")
    p.add_argument("--seed", type=int, default=0, help="training, sampling and dequantization seed")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu (the documented table), cuda or auto")
    p.add_argument("--out", default="runs/digits_table", help="run directories and results.json")
    p.add_argument("--docs", default="docs", help="where DIGITS.md and digits/<objective>.png go")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    bad = [o for o in args.objectives if o not in OBJECTIVES]
    if bad or not args.objectives:
        p.error(f"--objectives: unknown {bad}; valid: {', '.join(OBJECTIVES)}")
    for name in ("steps", "n_samples", "pc_steps", "bpd_images", "sample_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run_config(objective: str, args: argparse.Namespace) -> ImageRunConfig:
    """The digits preset with ``args.steps`` steps. The EMA decay is lowered to 1 − 10/steps for short runs
    (the initial weights then carry less than e⁻¹⁰ of the average) and the warmup to a tenth of the run."""
    train = preset_train_config(PRESET)
    train = dataclasses.replace(
        train, steps=args.steps, seed=args.seed, device=args.device, warmup=min(train.warmup, args.steps // 10),
        ema_decay=min(train.ema_decay, max(0.0, 1.0 - 10.0 / args.steps)), ckpt_every=0,
        log_every=max(1, min(50, args.steps // 20)))
    # no periodic grids: seconds per step measure training alone
    return ImageRunConfig(preset=PRESET, objective=objective, sample_every=0, train=train)


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _kid(r: dict) -> str:
    return f"{r['kid']:.3g} ± {r['kid_std']:.2g}"


def write_markdown(path: Path, args: argparse.Namespace, cfg: ImageRunConfig, rows: dict, reference: dict,
                   wall: float, stages: dict, command: str) -> None:
    tr, first = cfg.train, next(iter(rows.values()))
    lines = [
        "# Digits: four objectives, one network",
        "",
        f"The `{PRESET}` preset (a {first['parameters']:,}-parameter NCSN++-style U-Net, VE SDE with σ ∈ [0.01, 10], "
        "λ(t) = σ_t²) trained on the 1,437 training digits of scikit-learn's 8x8 digits with each objective: same "
        f"network, {tr.steps} steps at batch {tr.batch_size}, lr {tr.lr:g} (warmup {tr.warmup}), gradient clipping at "
        f"{tr.grad_clip:g}, EMA {tr.ema_decay:g}, seed {tr.seed} (the same initial weights and data order). "
        "Produced by",
        "",
        f"    {command}",
        "",
        "| objective | s / step | test bits/dim | digits-FID (PC) | KID (PC) | digits-FID (ODE) | KID (ODE) "
        "| ODE NFE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for obj, r in rows.items():
        pc, ode, bpd = r["pc"], r["ode"], r["bpd"]
        lines.append(f"| {obj} | {r['seconds_per_step']:.3f} | {_fmt(bpd['bpd'], 4)} ± {_fmt(bpd['bpd_se'], 2)} "
                     f"| {_fmt(pc['fid'])} | {_kid(pc)} | {_fmt(ode['fid'])} | {_kid(ode)} | {ode['nfe']:.0f} |")
    pc = first["pc"]
    lines += [
        f"| *test digits ({reference['n']})* | | | {_fmt(reference['fid'])} | {_kid(reference)} | | | |",
        "",
        "- **s / step**: wall-clock seconds per optimizer step (forward, backward, Adam, EMA): training time over "
        f"steps, {torch.get_num_threads()} torch threads.",
        f"- **test bits/dim**: {first['bpd']['n']} test digits (lcssm's fixed split); the 17 grey levels k are "
        "dequantized uniformly, 2(k + U)/17 − 1, and log2(17/2) bits added; probability-flow ODE from t = 1e-5 to 1 "
        f"(RK45, rtol = atol = {args.bpd_tol:g}), one Rademacher Hutchinson probe per image; ± is the standard "
        "error over images.",
        f"- **digits-FID / KID**: {args.n_samples:,} samples per sampler, rounded to 8 bits, against the 1,437 "
        "training digits, in the 128-d penultimate features of lcssm's digits classifier (not Inception: not "
        "comparable with image FIDs). KID is the unbiased polynomial-kernel MMD², mean ± std over 100 subsets of "
        "1,000; the features are unnormalised ReLU activations, hence its scale. The last row scores the "
        f"{reference['n']} held-out test digits the same way (with fewer images its FID is biased upwards).",
        f"- **PC**: {args.pc_steps} steps of {pc['predictor'].replace('_', ' ')}"
        + (f" + {pc['n_corrector_steps']} Langevin corrector step(s) (snr {pc['snr']:g})"
           if pc["corrector"] != "none" else "")
        + f" from t = 1 to {pc['eps']:g}, then Tweedie denoising ({pc['nfe']:.0f} score evaluations per sample). "
        f"**ODE**: RK45 with rtol = atol = {args.ode_tol:g} in batches of {args.sample_batch} (NFE: mean over "
        "batches), then Tweedie denoising.",
        "- **lcss and dsm** have the same parameter gradient when γ = 1 and the noise draws are the same "
        "(dsm − lcss = ½‖z‖²/σ², independent of θ): with one seed their runs differ only by floating-point "
        "rounding, so their rows differ only by that, and in seconds per step.",
        "",
        "Samples (the first 64 PC samples of each objective):",
        "",
        "| " + " | ".join(rows) + " |",
        "|" + "---|" * len(rows),
        "| " + " | ".join(f"![{o}](digits/{o}.png)" for o in rows) + " |",
        "",
        f"Wall time of the whole table: **{wall / 60:.1f} minutes** "
        f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in stages.items())}), on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python scripts/digits_table.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    out, docs = Path(args.out), Path(args.docs)
    (docs / "digits").mkdir(parents=True, exist_ok=True)
    stages = {"training": 0.0, "sampling + FID": 0.0, "bits/dim": 0.0}
    rows: dict[str, dict] = {}
    for obj in args.objectives:
        cfg = run_config(obj, args)
        run_dir = out / obj
        t0 = time.perf_counter()
        result = train_image(cfg, run_dir, overwrite=True, progress=args.progress)
        stages["training"] += time.perf_counter() - t0
        row = {"seconds_per_step": result.train_seconds / cfg.train.steps, "final_loss": result.final_loss,
               "parameters": sum(p.numel() for p in result.model.parameters())}
        t0 = time.perf_counter()
        common = {"n": args.n_samples, "batch_size": args.sample_batch, "seed": args.seed, "device": args.device,
                  "progress": args.progress}
        row["pc"] = fid_image_run(run_dir, sampler="pc", n_steps=args.pc_steps, **common)
        row["ode"] = fid_image_run(run_dir, sampler="ode", rtol=args.ode_tol, atol=args.ode_tol, **common)
        stages["sampling + FID"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        row["bpd"] = bpd_image_run(run_dir, n=args.bpd_images, seed=args.seed, rtol=args.bpd_tol,
                                   atol=args.bpd_tol, device=args.device, progress=args.progress)
        stages["bits/dim"] += time.perf_counter() - t0
        images = torch.from_numpy(np.load(run_dir / "fid_samples_pc.npz")["images"][:64])
        save_image_grid(docs / "digits" / f"{obj}.png", images, ncol=8, min_tile=48)
        rows[obj] = row
        out.mkdir(parents=True, exist_ok=True)  # partial results survive an interrupted table
        (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
        print(f"{obj}: {row['seconds_per_step']:.3f} s/step, bpd {row['bpd']['bpd']:.4g}, FID pc "
              f"{row['pc']['fid']:.4g} / ode {row['ode']['fid']:.4g} ({(time.perf_counter() - start) / 60:.1f} min "
              "so far)", file=sys.stderr, flush=True)

    # the floor: held-out test digits scored like the samples
    probe = ImageRunConfig(preset=PRESET)
    _, features = feature_extractor(probe, device="cpu")
    test = load_split(probe, "test").as_uint8()
    train = load_split(probe, "train").as_uint8()
    reference = {**image_quality(test, train, features, seed=args.seed), "n": len(test)}

    wall = time.perf_counter() - start
    write_markdown(docs / "DIGITS.md", args, run_config(args.objectives[0], args), rows, reference, wall, stages,
                   command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "wall_seconds": wall, "stages": stages,
                                                  "rows": rows, "test_digits": reference}, indent=2) + "\n")
    print(f"wrote {docs / 'DIGITS.md'} and {len(rows)} grids in {docs / 'digits'}; wall time of the whole table: "
          f"{wall:.0f} s ({wall / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
