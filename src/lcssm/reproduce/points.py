"""``points``: the point-diffusion default on six 2-D datasets, for every objective and every SDE. Each cell is the
run ``lcssm train --data D --objective O --sde S`` makes (:func:`lcssm.experiments.presets.point_spec` with those
three fields, then :func:`lcssm.experiments.pipeline.train_run`: training, then sampling with the spec's sampler
and the structure metrics of :func:`lcssm.experiments.points.sample_quality`).

The cells are the objectives (lcss, dsm, ssm_vr, fdssm) under VP and the SDEs (ve, subvp and the non-affine tanh
and student) under LCSS, on
2spirals, checkerboard, moons, 8gaussians, pinwheel and swissroll. A cell passes when its k-NN precision and recall
are both within ``TOLERANCE`` of their floors (held-out data against held-out data, same k and number of points).

A cell whose run directory already holds a finished run of the same spec (``config.json`` equal, a sample
record in ``metrics.json``) is read, not retrained: an interrupted table resumes where it stopped, and cells can be
trained beforehand in parallel with ``lcssm train ... --out OUT/runs/D-O-S``.

Sizes: ``full`` is the default command (3,000 steps, 2,000 samples; about 110-200 s per cell on one core, the
whole table about 1.5 core-hours). ``quick`` is LCSS under VP on the six datasets at 1,000 steps (a few minutes).
``smoke``: two datasets, three cells, 20 steps (seconds; the numbers mean nothing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lcssm.reproduce import Context
from lcssm.reproduce.report import Report, Table

DATASETS = ("2spirals", "checkerboard", "moons", "8gaussians", "pinwheel", "swissroll")
OBJECTIVE_CELLS = tuple((o, "vp") for o in ("lcss", "dsm", "ssm_vr", "fdssm"))
SDE_CELLS = tuple(("lcss", s) for s in ("ve", "subvp", "tanh", "student"))
TOLERANCE = 0.05

#: ``steps`` / ``n_samples`` None: the default spec's
SETTINGS = {
    "smoke": {"datasets": ("2spirals", "moons"), "cells": (("lcss", "vp"), ("dsm", "vp"), ("lcss", "ve")),
              "steps": 20, "n_samples": 300},
    "quick": {"datasets": DATASETS, "cells": (("lcss", "vp"),), "steps": 1000, "n_samples": 2000},
    "full": {"datasets": DATASETS, "cells": OBJECTIVE_CELLS + SDE_CELLS, "steps": None, "n_samples": None},
}


def cell_name(data: str, objective: str, sde: str) -> str:
    """The run directory of one cell under ``OUT/runs``: ``D-O-S`` (objective names contain underscores)."""
    return f"{data}-{objective}-{sde}"


def cell_spec(data: str, objective: str, sde: str, s: dict, ctx: Context):
    """The RunSpec of one cell: what ``lcssm train --data data --objective objective --sde sde`` trains, with this
    size's steps and number of samples and this context's seed."""
    from lcssm.config import apply_overrides
    from lcssm.experiments.presets import point_spec

    overrides = [f"data.source={data}", f"objective.name={objective}", f"train.seed={ctx.seed}"]
    if ctx.device.type != "cpu":
        overrides.append(f"train.device={ctx.device}")
    if s["steps"] is not None:
        overrides += [f"train.steps={s['steps']}", f"train.log_every={max(1, min(50, s['steps'] // 10))}"]
    if s["n_samples"] is not None:
        overrides.append(f"sampler.n_samples={s['n_samples']}")
    return apply_overrides(point_spec(sde), overrides)


def measure(data: str, objective: str, sde: str, s: dict, ctx: Context) -> dict[str, Any]:
    """One cell's train and sample records, trained now unless ``OUT/runs/D-O-S`` already holds them; with
    ``diverged`` when training stopped on a non-finite loss."""
    from lcssm.reproduce.reuse import ensure_trained

    spec, run_dir = cell_spec(data, objective, sde, s, ctx), ctx.out_dir / "runs" / cell_name(data, objective, sde)
    trained = ensure_trained(spec, run_dir, progress=ctx.progress, label=f"points cell {run_dir.name}",
                             kinds=("train", "sample"))
    if trained.reused:
        return {**trained.records, "reused": True, "dir": str(run_dir)}
    if trained.diverged is not None:
        return {"diverged": trained.diverged_note, "seconds": trained.seconds}
    return {**trained.records, "reused": False, "dir": str(run_dir), "seconds": trained.seconds}


def passes(sample: dict[str, Any], tolerance: float = TOLERANCE) -> bool:
    """Precision and recall both within ``tolerance`` of their floors."""
    return (sample["precision"] >= sample["precision_floor"] - tolerance
            and sample["recall"] >= sample["recall_floor"] - tolerance)


def _row(data: str, objective: str, sde: str, r: dict[str, Any]) -> list[Any]:
    if "diverged" in r:
        return [data, objective, sde, r["diverged"]] + ["-"] * 10
    t, q = r["train"], r["sample"]
    return [data, objective, sde, "yes" if passes(q) else "**no**",
            f"{q['precision']:.3f} ({q['precision_floor']:.3f})", f"{q['recall']:.3f} ({q['recall_floor']:.3f})",
            f"{q['density']:.3f} ({q['density_floor']:.3f})", f"{q['coverage']:.3f} ({q['coverage_floor']:.3f})",
            f"{q['hist_tv']:.3f} ({q['hist_tv_floor']:.3f})",
            f"{q['outside']:.4f} ({q['outside_floor']:.4f})" if "outside" in q else "-", q["energy_distance"],
            t["train_seconds"], q["seconds"], t["train_seconds"] + q["seconds"]]


def _caption(spec, s: dict, first: dict[str, Any] | None) -> str:
    from lcssm.experiments.points import HIST_BINS, OUTSIDE_MARGIN

    q = first["sample"] if first else {}
    k, n = q.get("knn_k", 5), q.get("knn_points", spec.sampler.n_samples)
    return (
        f"Each row is `lcssm train --data D --objective O --sde S` ({spec.train.steps} steps of batch "
        f"{spec.train.batch_size}, EMA {spec.train.ema_decay}; VE, VP, subVP sampled by Heun in 49 evaluations, the "
        f"non-affine tanh and student by Heun on the probability-flow ODE in t (pf_heun, 49)). Metrics of {n:,} "
        f"samples against {n:,} held-out data points, in brackets the floor (another "
        f"{n:,} held-out points scored the same way): k-NN precision / recall and density / coverage with k = {k}; "
        f"histogram TV: total variation between 2-D histograms on {HIST_BINS} × {HIST_BINS} bins over the held-out "
        f"points' box (bin widths in each run's record); outside: fraction of points outside the held-out box widened "
        f"by {OUTSIDE_MARGIN} of its extent per side; energy distance (floor ≈ 0). Pass: precision and recall "
        f"both within {TOLERANCE} of their floors. Seconds: training, sampling + metrics, and their sum, on one "
        "torch thread.")


def plot_cells(path: Path, cells: dict[tuple[str, str, str], dict[str, Any]], datasets: tuple[str, ...],
               columns: tuple[tuple[str, str], ...], n: int = 2000) -> Path:
    """One 2-D histogram per cell (rows: datasets, columns: objective / SDE), each row on its data's range, bins and
    colour scale, with ``n`` held-out data points in the last column."""
    import matplotlib.pyplot as plt

    from lcssm.device import make_generator
    from lcssm.experiments.points import DataSource, PointsKind
    from lcssm.plots import bounds_of, histogram_bins, histogram_counts, histogram_panel, save_figure

    fig, axes = plt.subplots(len(datasets), len(columns) + 1, squeeze=False,
                             figsize=(1.5 * (len(columns) + 1), 1.5 * len(datasets) + 0.4))
    fig.subplots_adjust(left=0.03, right=0.97, top=0.95, bottom=0.05, wspace=0.06, hspace=0.1)
    for i, data in enumerate(datasets):
        ref = DataSource(data).reference(n, make_generator(1)).numpy()
        bounds = bounds_of(ref)
        panels = []
        for objective, sde in columns:
            file = Path(cells[(data, objective, sde)].get("dir", "")) / PointsKind.samples_file
            panels.append((np.load(file)[:n] if file.is_file() else None, f"{objective}/{sde}"))
        panels.append((ref, "held-out data"))
        bins = histogram_bins(n)
        counts = [None if pts is None else histogram_counts(pts, bounds, bins) for pts, _ in panels]
        vmax = max(float(c.max()) for c in counts if c is not None)
        for ax, (_, name), c in zip(axes[i], panels, counts):
            if c is None:
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            else:
                image = histogram_panel(ax, c, bounds, vmax)
            if i == 0:
                ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(data, fontsize=8)
        bar = fig.colorbar(image, ax=list(axes[i]), fraction=0.012, pad=0.005)
        bar.ax.tick_params(labelsize=6)
    fig.text(0.03, 0.02, f"2-D histograms of {n:,} samples per run; each row shares its data's range, bins and "
             "colour scale (points per bin, 0 = black); the last column is held-out data.", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, crop=True)
    return path


def run(ctx: Context) -> Report:
    s = ctx.pick(SETTINGS)
    datasets, columns = s["datasets"], s["cells"]
    spec = cell_spec(datasets[0], *columns[0], s, ctx)
    report = ctx.report("points", "Point diffusion: six datasets, every objective and SDE", {
        "steps": spec.train.steps, "n_samples": spec.sampler.n_samples, "datasets": ", ".join(datasets),
        "cells": ", ".join(f"{o}/{d}" for o, d in columns), "tolerance": TOLERANCE})
    began = time.perf_counter()
    cells = {(d, o, e): measure(d, o, e, s, ctx) for d in datasets for o, e in columns}
    wall = time.perf_counter() - began
    ok = {k: r for k, r in cells.items() if "diverged" not in r}
    report.section("Structure metrics against their floors")
    report.table("points", Table(
        ["data", "objective", "SDE", "pass", "precision (floor)", "recall (floor)", "density (floor)",
         "coverage (floor)", "histogram TV (floor)", "outside (floor)", "energy distance", "train s", "sample s", "s"],
        [_row(*k, r) for k, r in cells.items()], _caption(spec, s, next(iter(ok.values()), None))))
    def gaps(o: str, e: str, key: str) -> float:
        samples = [cells[(d, o, e)]["sample"] for d in datasets if (d, o, e) in ok]
        return float(np.mean([q[key] - q[f"{key}_floor"] for q in samples])) if samples else np.nan

    by_column = Table(["objective / SDE", "passes", "mean precision − floor", "mean recall − floor"], [
        [f"{o}/{e}", f"{sum(passes(ok[(d, o, e)]['sample']) for d in datasets if (d, o, e) in ok)} / {len(datasets)}",
         gaps(o, e, "precision"), gaps(o, e, "recall")]
        for o, e in columns], "Per column: how many datasets pass, and the mean gap to the floors.")
    report.table("columns", by_column)
    report.section("Samples")
    report.figure(plot_cells(ctx.out_dir / "points.png", cells, datasets, columns),
                  "Rows: datasets; columns: objective / SDE, then held-out data.")
    reused = sum(bool(r.get("reused")) for r in cells.values())
    report.section("Verdict")
    report.text(f"- {sum(passes(r['sample']) for r in ok.values())} of {len(cells)} cells pass "
                f"(precision and recall within {TOLERANCE} of their floors)."
                + "".join(f"\n- {'/'.join(k)}: {r['diverged']}." for k, r in cells.items() if "diverged" in r)
                + (f"\n- {reused} cell(s) read from finished runs in {ctx.out_dir / 'runs'}." if reused else ""))
    report.results.update(cells={cell_name(*k): r for k, r in cells.items()}, wall_seconds=wall)
    return report
