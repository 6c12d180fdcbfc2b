"""``samplers``: sample quality against the number of network evaluations (NFE) for every fixed-grid sampler of
:func:`lcssm.sampling.sample`, next to PC at the run's default steps and the adaptive probability-flow ODE, on one
LCSS run of the ``digits`` preset (digits-FID / KID against the training digits).

The run is :func:`lcssm.reproduce.digits.objective_spec` for ``lcss`` at this size, trained by
:func:`lcssm.experiments.pipeline.train_run` into ``OUT/runs/lcss`` unless that directory already holds it (then it
is read: ``lcssm train --preset digits --objective lcss`` makes the full size's run). Every point is one
:func:`lcssm.experiments.fid.fid_run` with the same seed and number of samples; points are appended to
``OUT/sweep.jsonl`` as they finish and a rerun skips those already there.

Sizes: ``full``: the preset's 4,000-step run, 1,000 samples per point, NFE 10 … 200 for six solvers, PC, the ODE at
rtol = atol = 1e-5 (measured: 25 minutes of training and 80 of sampling on one loaded core, half of it
PC's 2,001 evaluations). ``quick``: half width,
400 steps, 200 samples, NFE 10 … 50 (a few minutes). ``smoke``: a few steps (seconds; the numbers mean nothing).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lcssm.reproduce import Context, require_digits
from lcssm.reproduce.report import Report, Table

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpm3", "edm", "euler_ancestral")
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "dpm3")
WITHIN = 0.10  # the bar: a deterministic solver within 10 % of PC's FID

#: ``steps`` / ``nf`` / ``batch`` / ``pc_steps`` None: the preset's
SETTINGS = {
    "smoke": {"steps": 3, "nf": 8, "batch": 16, "n_samples": 20, "sample_batch": 20, "nfes": (4, 8),
              "solvers": ("euler", "heun", "euler_ancestral"), "pc_steps": 3, "ode_tol": 1e-2},
    "quick": {"steps": 400, "nf": 16, "batch": 64, "n_samples": 200, "sample_batch": 200, "nfes": (10, 20, 35, 50),
              "solvers": SOLVERS, "pc_steps": 50, "ode_tol": 1e-3},
    "full": {"steps": None, "nf": None, "batch": None, "n_samples": 1000, "sample_batch": 500,
             "nfes": (10, 20, 35, 50, 100, 200), "solvers": SOLVERS, "pc_steps": None, "ode_tol": 1e-5},
}


def sweep_points(solvers: tuple[str, ...], nfes: tuple[int, ...], pc_steps: int | None,
                 ode_tols: tuple[float, ...], schedule: str = "karras") -> list[tuple[str, dict[str, Any]]]:
    """``(key, sampler overrides)`` of each point: every solver at every NFE on ``schedule``, then PC (at
    ``pc_steps``; None: the run's own; 0: no PC point) and the ODE at each tolerance (rtol = atol)."""
    points = [(f"{name}@{nfe}", {"name": name, "nfe": nfe, "schedule": schedule}) for name in solvers for nfe in nfes]
    if pc_steps != 0:
        points.append((f"pc@{pc_steps or 'default'}", {"name": "pc", "n_steps": pc_steps}))
    points += [(f"ode@{tol:g}", {"name": "ode", "rtol": tol, "atol": tol}) for tol in ode_tols]
    return points


def sweep(run_dir: Path, points: list[tuple[str, dict[str, Any]]], log: Path, *, n_samples: int, batch_size: int,
          seed: int = 0, device: Any = "auto", progress: bool = False) -> list[dict[str, Any]]:
    """One FID record per point (:func:`lcssm.experiments.fid.fid_run`, ``n_samples`` each), appended to the JSON
    lines file ``log`` as it finishes; a point already in ``log`` with the same request (sampler overrides, number
    of samples, batch size and seed) is read, not redrawn. The log does not know the run's weights: start a new one
    after retraining."""
    from lcssm.experiments.fid import fid_run

    done = {}
    if log.is_file():
        done = {r["key"]: r for r in map(json.loads, log.read_text().splitlines())}
    records = []
    for key, overrides in points:
        request = {**overrides, "n_samples": n_samples, "batch_size": batch_size, "seed": seed}
        if key not in done or done[key].get("request") != request:
            rec = fid_run(run_dir, request, device=device, progress=progress)
            done[key] = {"key": key, "overrides": overrides, "request": request, "sampler": overrides["name"],
                         **{k: rec[k] for k in ("fid", "kid", "kid_std", "nfe", "n", "sample_seconds", "file")}}
            with log.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
        records.append(done[key])
    return records


def plot_fid_against_nfe(path: Path, records: list[dict[str, Any]], metric: str = "digits-FID") -> Path:
    """FID against NFE (log scale), one line per solver, PC and the ODE as single markers."""
    import matplotlib.pyplot as plt

    from lcssm.plots import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4))
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(r["sampler"], []).append(r)
    for name, rs in by_name.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        single = len(rs) == 1
        linestyle = "none" if single else "-" if name in DETERMINISTIC else "--"
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], marker="s" if single else "o", linestyle=linestyle,
                label=name, markersize=5)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample (NFE)", ylabel=f"{metric} (log)",
           title="sample quality against NFE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="solid: deterministic", title_fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def verdict(records: list[dict[str, Any]], within: float = WITHIN) -> list[str]:
    """The done-when of the fast-sampler issue in numbers: the best deterministic solver at ≤ 35 NFE against PC,
    the smallest NFE at which a deterministic solver comes within ``within`` of PC, and the best sampler at ≤ 35."""
    pc = next((r for r in records if r["sampler"] == "pc"), None)
    fast = [r for r in records if r["nfe"] <= 35 and r["sampler"] in DETERMINISTIC]
    lines = []
    if pc is None or not fast:
        return ["- No PC point or no deterministic point at ≤ 35 NFE to compare."]
    best = min(fast, key=lambda r: r["fid"])
    lines.append(f"- Best deterministic solver at ≤ 35 NFE: {best['key']} with FID {best['fid']:.3g} against PC's "
                 f"{pc['fid']:.3g} at {pc['nfe']:.0f} NFE ({best['fid'] / pc['fid']:.2f}×; the bar is "
                 f"{1 + within:.2f}×).")
    close = [r for r in records if r["sampler"] in DETERMINISTIC + ("ode",) and r["fid"] <= (1 + within) * pc["fid"]]
    if close:
        first = min(close, key=lambda r: r["nfe"])
        lines.append(f"- Smallest NFE at which a deterministic sampler is within {within:.0%} of PC: "
                     f"{first['nfe']:.0f} ({first['key']}, FID {first['fid']:.3g}).")
    else:
        deterministic = [r for r in records if r["sampler"] in DETERMINISTIC + ("ode",)]
        limit = min(deterministic, key=lambda r: r["fid"])
        lines.append(f"- No deterministic sampler comes within {within:.0%} of PC at any NFE measured: their best is "
                     f"{limit['key']} at FID {limit['fid']:.3g}.")
        largest = [max((r for r in deterministic if r["sampler"] == name), key=lambda r: r["nfe"])
                   for name in dict.fromkeys(r["sampler"] for r in deterministic)]
        lo, hi = min(r["fid"] for r in largest), max(r["fid"] for r in largest)
        if len(largest) > 1 and hi <= (1 + within) * lo:
            lines.append(f"- At their largest NFE the deterministic samplers agree within {within:.0%} (FID "
                         f"{lo:.3g}-{hi:.3g}): that is the sample quality of this model's probability-flow ODE, "
                         "which no solver, NFE or tolerance measured here improves.")
    any_fast = min((r for r in records if r["nfe"] <= 35), key=lambda r: r["fid"])
    lines.append(f"- Best sampler at ≤ 35 NFE: {any_fast['key']}, FID {any_fast['fid']:.3g}.")
    return lines


def run(ctx: Context) -> Report:
    from lcssm.reproduce.digits import objective_spec
    from lcssm.reproduce.reuse import ensure_trained

    require_digits("samplers")
    s = ctx.pick(SETTINGS)
    spec, run_dir = objective_spec("digits", "lcss", s, ctx), ctx.out_dir / "runs" / "lcss"
    report = ctx.report("samplers", "Sample quality against NFE on the digits preset", {
        "steps": spec.train.steps, "nf": s["nf"] or 32, "n_samples": s["n_samples"], "nfes": s["nfes"],
        "solvers": ", ".join(s["solvers"]), "pc_steps": s["pc_steps"] or spec.sampler.n_steps,
        "ode_tol": s["ode_tol"], "schedule": "karras"})
    began = time.perf_counter()
    trained = ensure_trained(spec, run_dir, progress=ctx.progress, label="samplers run")
    if trained.diverged is not None:
        raise trained.diverged
    reused, log = trained.reused, ctx.out_dir / "sweep.jsonl"
    if not reused:
        log.unlink(missing_ok=True)  # its points, if any, are of the weights just replaced
    train_seconds = trained.records["train"]["train_seconds"]
    records = sweep(run_dir, sweep_points(s["solvers"], s["nfes"], s["pc_steps"], (s["ode_tol"],)),
                    log, n_samples=s["n_samples"], batch_size=s["sample_batch"],
                    seed=ctx.seed, device=ctx.device, progress=ctx.progress)
    report.section("Digits-FID against NFE")
    rows = [[r["sampler"], r["nfe"], r["fid"], r["kid"], r["kid_std"], 1000 * r["sample_seconds"] / r["n"]]
            for r in sorted(records, key=lambda r: (r["sampler"], r["nfe"]))]
    report.table("sweep", Table(
        ["sampler", "NFE", "digits-FID", "KID", "KID std", "ms / sample"], rows,
        f"One LCSS run of the digits preset ({spec.train.steps} steps{', read from its directory' if reused else ''}"
        f"; {train_seconds:.0f} s of training). Each row: {s['n_samples']:,} samples from the same seed, rounded to "
        "8 bits, against the 1,437 training digits in the features of lcssm's digits classifier (FID of fewer "
        "samples is biased upwards). Fixed-grid solvers walk the Karras schedule (ρ = 7) from "
        "the SDE's largest σ to σ(t_min) and end with the Tweedie step; PC: reverse diffusion + one Langevin "
        "corrector step per level (NFE counts both); ode: adaptive RK45 in torch. ms / sample: sampling time over "
        f"samples, {s['sample_batch']} per batch, on this machine."))
    report.figure(plot_fid_against_nfe(ctx.out_dir / "fid_vs_nfe.png", records), "digits-FID against NFE.")
    report.section("Verdict")
    report.text("\n".join(verdict(records)))
    report.results.update(points=records, train_seconds=train_seconds, reused_run=reused,
                          wall_seconds=time.perf_counter() - began,
                          best_fid=min((r["fid"] for r in records), default=math.nan))
    return report
