"""``digits``: four objectives, one network. The ``digits`` image preset (an NCSN++-style U-Net, VE SDE,
λ(t) = σ_t²) trained with LCSS, DSM, SSM-VR and FD-SSM (same network, steps, seed and data order), each measured
for seconds per training step, test bits/dim and the digits-FID / KID of samples from the PC sampler and from the
probability-flow ODE, next to the same scores of the held-out test digits (the floor of the metric).

Every run goes through the pipeline: :func:`lcssm.experiments.presets.image_spec` with this size's overrides,
:func:`lcssm.experiments.pipeline.train_run`, :func:`lcssm.experiments.fid.fid_run` (PC, then ODE) and
:func:`lcssm.experiments.pipeline.bpd_run`.

Sizes: ``full`` is the table of docs/DIGITS.md: the preset's network and batch, 1,000 steps, 2,000 samples per
sampler, all 360 test digits (about 47 minutes on 2 idle cores). ``quick`` is the network at half width
(nf = 16) and batch 64 for 400 steps (fig7's quick setting), 200 samples, looser ODE tolerances: a few minutes.
``smoke``: nf = 8, a few steps (seconds; the numbers mean nothing).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcssm.reproduce import Context, require_digits
from lcssm.reproduce.report import Report, Table

OBJECTIVES = ("lcss", "dsm", "ssm_vr", "fdssm")
PRESET = "digits"

#: ``nf`` / ``batch`` None: the preset's (32, 128)
SETTINGS = {
    "smoke": {"steps": 3, "nf": 8, "batch": 16, "n_samples": 20, "pc_steps": 3, "ode_tol": 1e-2, "bpd_images": 4,
              "bpd_tol": 1e-2, "sample_batch": 20},
    "quick": {"steps": 400, "nf": 16, "batch": 64, "n_samples": 200, "pc_steps": 50, "ode_tol": 1e-2,
              "bpd_images": 48, "bpd_tol": 1e-3, "sample_batch": 200},
    "full": {"steps": 1000, "nf": None, "batch": None, "n_samples": 2000, "pc_steps": 100, "ode_tol": 1e-3,
             "bpd_images": 360, "bpd_tol": 1e-4, "sample_batch": 500},
}
STAGES = ("training", "sampling + FID", "bits/dim")


def objective_spec(preset: str, objective: str, s: dict, ctx: Context):
    """The RunSpec of one objective on an image preset at a size ``s`` (``nf``, ``batch``: None = the preset's;
    ``steps``: None = the preset's). The EMA decay is lowered to 1 − 10/steps for short runs (the initial weights
    then carry less than e⁻¹⁰ of the average) and the warmup to a tenth of the run; no periodic sample grids, so
    seconds per step measure training alone. Shared by the ``digits`` and ``table3`` targets."""
    from lcssm.config import apply_overrides
    from lcssm.experiments.presets import ImagePreset, image_spec

    spec = image_spec(ImagePreset(preset=preset, nf=s["nf"]))
    steps, train = s["steps"] or spec.train.steps, spec.train
    overrides = [
        f"objective.name={objective}", f"train.steps={steps}", f"train.seed={ctx.seed}", f"train.device={ctx.device}",
        f"train.warmup={min(train.warmup, steps // 10)}",
        f"train.ema_decay={min(train.ema_decay, max(0.0, 1.0 - 10.0 / steps))!r}", "train.ckpt_every=0",
        f"train.log_every={max(1, min(50, steps // 20))}", "grids.every=0",
    ]
    if s["batch"] is not None:
        overrides.append(f"train.batch_size={s['batch']}")
    return apply_overrides(spec, overrides)


def run_spec(objective: str, s: dict, ctx: Context):
    """The RunSpec of one objective: the digits preset at this size (:func:`objective_spec`)."""
    return objective_spec(PRESET, objective, s, ctx)


def _sampler(s: dict, ctx: Context, name: str) -> dict[str, Any]:
    """fid_run's sampler overrides: PC at ``pc_steps`` steps or the ODE at rtol = atol = ``ode_tol``."""
    common = {"name": name, "n_samples": s["n_samples"], "batch_size": s["sample_batch"], "seed": ctx.seed}
    if name == "pc":
        return {**common, "n_steps": s["pc_steps"]}
    return {**common, "rtol": s["ode_tol"], "atol": s["ode_tol"]}


def measure(objective: str, s: dict, ctx: Context, stages: dict[str, float]) -> dict[str, Any]:
    """Train one objective (or read its finished run in ``OUT/runs/OBJ``) and measure it; adds the seconds of
    each stage to ``stages``. The row's ``grid`` is the sample grid of its first 64 PC samples
    (``OUT/digits/<objective>.png``); a diverged run has ``diverged``."""
    from lcssm.experiments.fid import fid_run
    from lcssm.experiments.pipeline import LikelihoodOptions, bpd_run, open_run
    from lcssm.models import count_parameters
    from lcssm.plots import save_image_grid
    from lcssm.reproduce.reuse import ensure_trained

    spec, run_dir = run_spec(objective, s, ctx), ctx.out_dir / "runs" / objective
    began = time.perf_counter()
    trained = ensure_trained(spec, run_dir, progress=ctx.progress, label=f"digits row {objective}")
    stages["training"] += time.perf_counter() - began
    if trained.diverged is not None:
        return {"diverged": trained.diverged_note, "minutes": (time.perf_counter() - began) / 60}
    train = trained.records["train"]
    row: dict[str, Any] = {"seconds_per_step": train["train_seconds"] / spec.train.steps,
                           "final_loss": train["final_loss"],
                           "parameters": count_parameters(open_run(run_dir, "cpu").model)}
    t0 = time.perf_counter()
    for name in ("pc", "ode"):
        row[name] = fid_run(run_dir, _sampler(s, ctx, name), device=ctx.device, progress=ctx.progress)
    stages["sampling + FID"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    options = LikelihoodOptions(n=s["bpd_images"], rtol=s["bpd_tol"], atol=s["bpd_tol"], seed=ctx.seed,
                                progress=ctx.progress)
    row["bpd"] = bpd_run(run_dir, options, device=ctx.device)
    stages["bits/dim"] += time.perf_counter() - t0
    images = torch.from_numpy(np.load(row["pc"]["file"])["images"][:64])
    row["grid"] = str(save_image_grid(ctx.out_dir / "digits" / f"{objective}.png", images, ncol=8, min_tile=48))
    row["minutes"] = (time.perf_counter() - began) / 60
    return row


def reference_scores(ctx: Context) -> dict[str, Any]:
    """The floor of the metric: the held-out test digits scored like the samples, against the training digits."""
    from lcssm.experiments.fid import feature_extractor, image_quality
    from lcssm.experiments.images import load_split
    from lcssm.experiments.presets import ImagePreset, image_spec

    data = image_spec(ImagePreset(preset=PRESET)).data
    _, features = feature_extractor(data, device="cpu")
    test = load_split(data, "test").as_uint8()
    train = load_split(data, "train").as_uint8()
    return {**image_quality(test, train, features, seed=ctx.seed), "n": len(test)}


def _table_rows(rows: dict[str, dict], reference: dict[str, Any]) -> list[list[Any]]:
    out = []
    for obj, r in rows.items():
        if "diverged" in r:
            out.append([obj, r["diverged"]] + ["-"] * 9 + [r["minutes"]])
            continue
        pc, ode, bpd = r["pc"], r["ode"], r["bpd"]
        out.append([obj, r["seconds_per_step"], bpd["bpd"], bpd["bpd_se"], pc["fid"], pc["kid"], pc["kid_std"],
                    ode["fid"], ode["kid"], ode["kid_std"], ode["nfe"], r["minutes"]])
    out.append([f"test digits ({reference['n']})", "-", "-", "-", reference["fid"], reference["kid"],
                reference["kid_std"], "-", "-", "-", "-", "-"])
    return out


def _caption(s: dict, rows: dict[str, dict], reference: dict[str, Any]) -> str:
    first = next((r for r in rows.values() if "diverged" not in r), None)
    pc = first["pc"] if first else {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
                                    "n_corrector_steps": 1, "t_min": 1e-5, "nfe": math.nan}
    corrector = (f" + {pc['n_corrector_steps']} Langevin corrector step(s) (snr {pc['snr']:g})"
                 if pc["corrector"] != "none" else "")
    return (
        f"s / step: wall-clock seconds per optimizer step (forward, backward, Adam, EMA): training time over steps, "
        f"{torch.get_num_threads()} torch threads. Test bits/dim: {s['bpd_images']} test digits (lcssm's fixed "
        "split); the 17 grey levels k are dequantized uniformly, 2(k + U)/17 − 1, and log2(17/2) bits added; "
        f"probability-flow ODE from t = 1e-5 to 1 (RK45, rtol = atol = {s['bpd_tol']:g}), one Rademacher "
        "Hutchinson probe per image; ± is the standard error over images. Digits-FID / KID: "
        f"{s['n_samples']:,} samples per sampler, rounded to 8 bits, against the 1,437 training digits, in the "
        "128-d penultimate features of lcssm's digits classifier (not Inception: not comparable with image FIDs). "
        "KID is the unbiased polynomial-kernel MMD², mean ± std over 100 subsets of up to 1,000; the features are "
        "unnormalised ReLU activations, hence its scale. The last row scores the "
        f"{reference['n']} held-out test digits the same way (with fewer images its FID is biased upwards). PC: "
        f"{s['pc_steps']} steps of {pc['predictor'].replace('_', ' ')}{corrector} from t = 1 to {pc['t_min']:g}, "
        f"then Tweedie denoising ({pc['nfe']:.0f} score evaluations per sample). ODE: RK45 with rtol = atol = "
        f"{s['ode_tol']:g} in batches of {s['sample_batch']} (NFE: mean over batches), then Tweedie denoising. "
        "Minutes: training and evaluation of the row. lcss and dsm have the same parameter gradient when γ = 1 "
        "and the noise draws are the same (dsm − lcss = ½‖z‖²/σ², independent of θ): with one seed their runs "
        "differ only by floating-point rounding, so their rows differ only by that, and in seconds per step.")


def _verdict(report: Report, rows: dict[str, dict]) -> None:
    ok = {o: r for o, r in rows.items() if "diverged" not in r}
    lines = []
    if "lcss" in ok and "dsm" in ok:
        lc, ds = ok["lcss"], ok["dsm"]
        lines.append(f"- LCSS − DSM: digits-FID (PC) {lc['pc']['fid'] - ds['pc']['fid']:+.3g}, bits/dim "
                     f"{lc['bpd']['bpd'] - ds['bpd']['bpd']:+.3g}; s / step DSM / LCSS = "
                     f"{ds['seconds_per_step'] / lc['seconds_per_step']:.3f} (the same gradient: run-to-run noise).")
    if "lcss" in ok:
        base = ok["lcss"]["seconds_per_step"]
        lines.append("- Seconds per step relative to LCSS: " + ", ".join(
            f"{o} {r['seconds_per_step'] / base:.2f}×" for o, r in ok.items()) + ".")
    lines += [f"- {o}: {r['diverged']}." for o, r in rows.items() if "diverged" in r]
    report.section("Verdict")
    report.text("\n".join(lines) or "- Every run diverged.")


def run(ctx: Context) -> Report:
    require_digits("digits")
    s = ctx.pick(SETTINGS)
    train = run_spec(OBJECTIVES[0], s, ctx).train
    report = ctx.report("digits", "Digits: four objectives, one network", {
        **s, "nf": s["nf"] or 32, "batch": train.batch_size, "lr": train.lr, "warmup": train.warmup,
        "grad_clip": train.grad_clip, "ema": train.ema_decay, "objectives": ", ".join(OBJECTIVES),
        "torch_threads": torch.get_num_threads()})
    began = time.perf_counter()
    stages = dict.fromkeys(STAGES, 0.0)
    rows = {obj: measure(obj, s, ctx, stages) for obj in OBJECTIVES}
    reference = reference_scores(ctx)
    wall = time.perf_counter() - began
    report.section("Four objectives on the digits preset")
    report.table("digits", Table(
        ["objective", "s / step", "test bits/dim", "± s.e.", "digits-FID (PC)", "KID (PC)", "KID std (PC)",
         "digits-FID (ODE)", "KID (ODE)", "KID std (ODE)", "ODE NFE", "minutes"],
        _table_rows(rows, reference), _caption(s, rows, reference)))
    report.table("stages", Table(["stage", "minutes"], [[k, v / 60] for k, v in stages.items()]
                                 + [["whole table", wall / 60]],
                                 "Wall time of the whole table by stage, over the four objectives."))
    report.section("Samples")
    for obj, r in rows.items():
        if "grid" in r:
            report.figure(Path(r["grid"]), f"{obj}: the first 64 PC samples.")
    _verdict(report, rows)
    report.results.update(rows=rows, test_digits=reference, stages=stages, wall_seconds=wall)
    return report
