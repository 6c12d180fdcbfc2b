"""``tails``: where a non-affine SDE helps, measured. VP against the non-affine tanh and Student-t SDEs at equal steps
on heavy-tailed 2-D data (``student3``: Student-t coordinates with 3 degrees of freedom) and a Gaussian-tailed
control (``gaussian``, the same variance).

Every cell is the default ``lcssm train --data D --sde S`` (:func:`lcssm.experiments.presets.point_spec`), then
``n_tail`` samples of its own sampler scored against as many fresh data points: bulk k-NN precision / recall (the
train run's sample record), the tail metrics of :func:`lcssm.metrics.tails.tail_metrics` (radius quantile errors
at 0.99 and 0.999, mass and KS distance of the radii beyond the data's 0.99 quantile), and the held-out
negative log-likelihood through the probability-flow ODE (exact divergence; nats per point, lower is better).

Sizes: ``full`` the default command (3,000 steps), 20,000 tail samples, NLL of 1,000 points; ``quick`` 1,000 steps,
10,000 samples, 300 points; ``smoke`` 20 steps, one dataset, two SDEs.
"""

from __future__ import annotations

import time
from typing import Any

from lcssm.reproduce import Context
from lcssm.reproduce.report import Report, Table

DATASETS = ("student3", "gaussian")
SDES = ("vp", "tanh", "student")
#: the image half: the ``table3`` target's LCSS row on the mnist preset (VE) and the same row with the tanh SDE
IMAGE_ROWS = ("lcss", "lcss-tanh")

SETTINGS = {
    "smoke": {"datasets": ("student3",), "sdes": ("vp", "tanh"), "steps": 20, "n_tail": 400, "n_nll": 20},
    "quick": {"datasets": DATASETS, "sdes": SDES, "steps": 1000, "n_tail": 10_000, "n_nll": 300},
    "full": {"datasets": DATASETS, "sdes": SDES, "steps": None, "n_tail": 20_000, "n_nll": 1000},
}


def cell_spec(data: str, sde: str, s: dict, ctx: Context):
    """What ``lcssm train --data data --sde sde`` trains, at this size's steps and this context's seed."""
    from lcssm.reproduce.points import cell_spec as points_cell

    return points_cell(data, "lcss", sde, {**s, "n_samples": None}, ctx)


def measure(data: str, sde: str, s: dict, ctx: Context) -> dict[str, Any]:
    """One cell: train (or read) the run, then its tail metrics and held-out NLL (kept in the run's metrics.json
    as a ``tails`` record, read again by a rerun)."""
    import torch

    from lcssm.device import make_generator
    from lcssm.experiments.pipeline import LikelihoodOptions, bpd_run, open_run, with_sampler
    from lcssm.experiments.points import DataSource
    from lcssm.files import append_metrics, read_metrics
    from lcssm.metrics.tails import tail_metrics
    from lcssm.reproduce.reuse import ensure_trained
    from lcssm.sampling.registry import draw

    spec, run_dir = cell_spec(data, sde, s, ctx), ctx.out_dir / "runs" / f"{data}-{sde}"
    trained = ensure_trained(spec, run_dir, progress=ctx.progress, label=f"tails cell {run_dir.name}",
                             kinds=("train", "sample"))
    if trained.diverged is not None:
        return {"diverged": trained.diverged_note}
    request = {"n_tail": s["n_tail"], "n_nll": s["n_nll"], "seed": ctx.seed}
    kept = [r for r in read_metrics(run_dir).get("tails", []) if r.get("request") == request]
    if kept:
        return {**trained.records, "tails": kept[-1], "dir": str(run_dir)}
    run = open_run(run_dir, ctx.device)
    began = time.perf_counter()
    sampler = with_sampler(run.spec, {"n_samples": s["n_tail"], "seed": ctx.seed + 7}).sampler
    samples, _ = draw(run.score_fn, run.sde, run.spec.data.shape, sampler, device=run.device)
    reference = DataSource(data).reference(s["n_tail"], make_generator(ctx.seed + 11))
    record: dict[str, Any] = {"request": request, **tail_metrics(samples, reference), **_survival(samples, reference)}
    nll = bpd_run(run_dir, LikelihoodOptions(n=s["n_nll"], seed=ctx.seed + 13), device=ctx.device)
    record.update(nll_nats=nll["nll_nats"], nll_nats_se=nll["nll_nats_se"],
                  non_finite=int((~torch.isfinite(samples).all(1)).sum()), seconds=time.perf_counter() - began)
    append_metrics(run_dir, "tails", record)
    return {**trained.records, "tails": record, "dir": str(run_dir)}


def image_rows(ctx: Context) -> dict[str, dict[str, Any]] | str:
    """The :data:`IMAGE_ROWS` of the ``table3`` target at this size, measured (or read) in ``OUT/mnist`` exactly as
    that target keeps its rows (:func:`lcssm.reproduce.table3.measure_rows`); the reason, as text, when its FID
    weights or MNIST-5k are not installed."""
    import dataclasses

    from lcssm.reproduce import TargetUnavailable
    from lcssm.reproduce.table3 import measure_rows

    try:
        return measure_rows(dataclasses.replace(ctx, out_dir=ctx.out_dir / "mnist"), IMAGE_ROWS)
    except TargetUnavailable as e:
        return str(e)


def _survival(samples, reference, n: int = 60) -> dict[str, list[float]]:
    """P(|x| > r) of samples and data on ``n`` radii log-spaced from the data's median radius to its largest."""
    import numpy as np

    r_s = samples.double().norm(dim=1).numpy()
    r_d = reference.double().norm(dim=1).numpy()
    radii = np.geomspace(np.median(r_d), r_d.max(), n)
    return {"radii": radii.tolist(), "survival_samples": [float((r_s > r).mean()) for r in radii],
            "survival_data": [float((r_d > r).mean()) for r in radii]}


def plot_survival(path, cells: dict, datasets: tuple[str, ...], sdes: tuple[str, ...]):
    """Per dataset, the radius survival function P(|x| > r) of each SDE's samples and of the data, log-log."""
    from lcssm.plots import plt, save_figure

    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        first = None
        for i, e in enumerate(sdes):
            t = cells[(d, e)].get("tails")
            if t is None:
                continue
            first = first or t
            ax.loglog(t["radii"], t["survival_samples"], color=f"C{i}", label=e)
        if first is not None:
            ax.loglog(first["radii"], first["survival_data"], "k--", label="data")
        ax.set_title(d)
        ax.set_xlabel("radius r = |x|")
        ax.set_ylabel("P(|x| > r)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return path


def _row(data: str, sde: str, r: dict[str, Any]) -> list[Any]:
    if "diverged" in r:
        return [data, sde, r["diverged"]] + ["-"] * 7
    q, t = r["sample"], r["tails"]
    return [data, sde, f"{q['precision']:.3f} ({q['precision_floor']:.3f})",
            f"{q['recall']:.3f} ({q['recall_floor']:.3f})", f"{t['q0.99_rel_error']:+.3f}",
            f"{t['q0.999_rel_error']:+.3f}", f"{t['tail_mass']:.4f}", f"{t['tail_ks']:.3f}",
            f"{t['nll_nats']:.3f} ± {t['nll_nats_se']:.3f}", r["train"]["train_seconds"]]


def run(ctx: Context) -> Report:
    s = ctx.pick(SETTINGS)
    spec = cell_spec(s["datasets"][0], s["sdes"][0], s, ctx)
    report = ctx.report("tails", "Heavy tails: VP against non-affine SDEs at equal steps", {
        "steps": spec.train.steps, "datasets": ", ".join(s["datasets"]), "sdes": ", ".join(s["sdes"]),
        "tail samples": s["n_tail"], "NLL points": s["n_nll"]})
    cells = {(d, e): measure(d, e, s, ctx) for d in s["datasets"] for e in s["sdes"]}
    report.section("Bulk and tail metrics, held-out NLL")
    report.table("tails", Table(
        ["data", "SDE", "precision (floor)", "recall (floor)", "r 0.99-quantile error", "r 0.999-quantile error",
         "mass beyond data's r_0.99", "KS of r beyond r_0.99", "held-out NLL (nats / point)", "train s"],
        [_row(d, e, r) for (d, e), r in cells.items()],
        f"Each row is `lcssm train --data D --sde S` at {spec.train.steps} steps (LCSS; the default recipe of each "
        f"SDE), sampled by its default sampler. Precision / recall: k = 5 on 2,000 samples (floor: held-out data). "
        f"Tail columns: {s['n_tail']:,} samples against as many fresh data points, on the radius r = |x|: relative "
        "error of its quantiles (negative: too light), the fraction of samples beyond the data's 0.99 quantile "
        "(0.01 is right) and the KS distance between the radii of samples and data beyond it. NLL: "
        f"{s['n_nll']:,} fresh points through the probability-flow ODE with the exact divergence and the SDE's exact "
        "prior log-density, ± standard error."))
    report.section("Tails")
    report.figure(plot_survival(ctx.out_dir / "tails.png", cells, s["datasets"], s["sdes"]),
                  "Radius survival functions, samples of each SDE against fresh data (log-log: a power law is a "
                  "straight line).")
    report.section("Verdict")
    lines = []
    for d in s["datasets"]:
        ok = {e: cells[(d, e)] for e in s["sdes"] if "diverged" not in cells[(d, e)]}
        if ok:
            best_nll = min(ok, key=lambda e: ok[e]["tails"]["nll_nats"])
            best_tail = min(ok, key=lambda e: abs(ok[e]["tails"]["q0.999_rel_error"]))
            lines.append(f"- {d}: lowest held-out NLL with {best_nll}, closest 0.999 radius quantile with {best_tail}.")
    report.text("\n".join(lines))
    report.section("Images: the mnist preset, VE against tanh")
    images = image_rows(ctx)
    if isinstance(images, str):
        report.text(f"Not measured: {images}")
    else:
        from lcssm.reproduce.table3 import SETTINGS as TABLE3
        from lcssm.reproduce.table3 import row_cells

        t3 = ctx.pick(TABLE3)
        report.table("images", Table(
            ["row", "s / step", "test bits/dim", "FID (tf), PC", f"FID (tf), Heun-{t3['heun_nfe']}", "minutes"],
            [row_cells(name, r, ("s_per_step", "bpd_pm", "fid", "fid_heun", "minutes")) for name, r in images.items()],
            f"The `table3` target's rows at this size, kept in OUT/mnist/rows: LCSS on the mnist preset with its VE "
            f"SDE, and with the non-affine tanh SDE at the local Gaussian center (`--sde tanh`), equal steps. FID: "
            f"{t3['n_samples']} samples of PC ({t3['pc_steps']} steps + 1 corrector) and of Heun on the "
            f"probability-flow ODE (`heun`; `pf_heun` for tanh) against held-out digits (docs/MNIST.md); bits/dim "
            f"of {t3['bpd_images']} test digits through the ODE."))
        report.results["images"] = images
    report.results.update(cells={f"{d}-{e}": r for (d, e), r in cells.items()})
    return report
