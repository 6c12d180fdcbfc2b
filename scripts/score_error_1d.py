#!/usr/bin/env python
"""Learned scores of 1-D runs against the true score: a non-affine SDE against its Fokker–Planck solution, VP
against its closed form.

    python scripts/score_error_1d.py --out runs/score1d [--sde tanh student vp] [--steps 3000] [--threads 1]

The data: 20,000 draws of a 1-D mixture (weights 0.4 / 0.6 of N(−1.5, 0.15²) and N(1, 0.15²)), saved as
OUT/data.npy. Each SDE's run is what ``lcssm train --data OUT/data.npy --sde S`` trains (the point default:
preconditioned residual MLP, LCSS; for a non-affine SDE its noise table and the local Gaussian center). Its EMA score
is compared at t ∈ {0.01, 0.05, 0.2, 0.5} with the true score of the same mixture under the same SDE: the
Fokker–Planck solution on a grid (:mod:`lcssm.metrics.fokker_planck`) for every SDE, and VP's closed-form Gaussian
mixture as a check of that solution. Reported per t: the relative score error
``√(E_p_t[(s_θ − s)²] / E_p_t[s²])`` (a quadrature over the grid, weighted by p_t) — 1 would be a useless model, 0 a
perfect one — and OUT/score1d.png, the learned and true scores at those times. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

MIXTURE = ((0.4, -1.5, 0.15), (0.6, 1.0, 0.15))
TIMES = (0.01, 0.05, 0.2, 0.5)


def _data(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    k = g.random(n) < MIXTURE[0][0]
    x = np.where(k, g.normal(MIXTURE[0][1], MIXTURE[0][2], n), g.normal(MIXTURE[1][1], MIXTURE[1][2], n))
    return x[:, None].astype(np.float32)


def _mixture_density(grid: torch.Tensor) -> torch.Tensor:
    return sum(w * torch.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)) for w, m, s in MIXTURE)


def _vp_closed_form_score(sde, x: torch.Tensor, t: float) -> torch.Tensor:
    """∂ₓ log p_t of the mixture under VP: components N(α m, α² s² + σ²)."""
    alpha, sigma = (float(v) for v in sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64)))
    comps = [(w, alpha * m, alpha**2 * s**2 + sigma**2) for w, m, s in MIXTURE]
    log_dens = torch.stack([math.log(w) - 0.5 * (x - m) ** 2 / v - 0.5 * math.log(2 * math.pi * v)
                            for w, m, v in comps])
    resp = torch.softmax(log_dens, 0)  # the components' posterior weights, stable far from the data
    return sum(r * (-(x - m) / v) for r, (_, m, v) in zip(resp, comps))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sde", nargs="+", default=["tanh", "student", "vp"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lcssm.config import apply_overrides
    from lcssm.experiments.pipeline import open_run, train_run
    from lcssm.experiments.presets import point_spec
    from lcssm.files import check_run_dir
    from lcssm.metrics.fokker_planck import fokker_planck_times, solve_fokker_planck
    from lcssm.plots import plt, save_figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / "data.npy"
    if not data_file.exists():
        np.save(data_file, _data(20_000))
    grid = torch.linspace(-12, 12, 2401, dtype=torch.float64)
    rows, fig = [], plt.figure(figsize=(4 * len(TIMES), 3.2 * len(args.sde)))
    for i, name in enumerate(args.sde):
        run_dir = out / name
        if not (run_dir / "metrics.json").exists():
            check_run_dir(run_dir)
            spec = apply_overrides(point_spec(name), [f"data.source={data_file}", f"train.steps={args.steps}",
                                                      "sampler.n_samples=0"])
            train_run(spec, run_dir, progress=False)
        run = open_run(run_dir, "cpu")
        sde = run.sde
        solution = solve_fokker_planck(sde, grid, _mixture_density(grid), fokker_planck_times(sde, 400, t_max=0.6))
        for j, t in enumerate(TIMES):
            tt = torch.full((len(grid),), t, dtype=torch.float64)
            truth = solution.score(grid[:, None], tt)[:, 0]
            with torch.no_grad():
                learned = run.score_fn(grid[:, None].float(), tt.float())[:, 0].double()
            weight = solution.density(t)
            rel = math.sqrt(float((weight * (learned - truth) ** 2).sum() / (weight * truth**2).sum()))
            row = {"sde": name, "t": t, "relative_score_error": rel}
            if name == "vp":  # the grid solution against the closed form: how exact the reference is
                closed = _vp_closed_form_score(sde, grid, t)
                row["fp_vs_closed_form"] = math.sqrt(float((weight * (truth - closed) ** 2).sum()
                                                           / (weight * closed**2).sum()))
            rows.append(row)
            ax = fig.add_subplot(len(args.sde), len(TIMES), i * len(TIMES) + j + 1)
            bulk = weight > 1e-4 * weight.max()
            ax.plot(grid[bulk], truth[bulk], "k-", lw=1.5, label="true (Fokker–Planck)")
            ax.plot(grid[bulk], learned[bulk], "C1--", lw=1.2, label="learned")
            ax.set_title(f"{name}, t = {t}: rel. error {rel:.3f}", fontsize=9)
            if i == j == 0:
                ax.legend(fontsize=7)
    save_figure(fig, out / "score1d.png")
    (out / "score1d.json").write_text(json.dumps(rows, indent=1))
    print("| SDE | " + " | ".join(f"t = {t}" for t in TIMES) + " |")
    print("|---|" + "---|" * len(TIMES))
    for name in args.sde:
        cells = [r for r in rows if r["sde"] == name]
        print(f"| {name} | " + " | ".join(f"{r['relative_score_error']:.3f}" for r in cells) + " |")
    vp = [r for r in rows if "fp_vs_closed_form" in r]
    if vp:
        print("| FP grid vs VP closed form | " + " | ".join(f"{r['fp_vs_closed_form']:.1e}" for r in vp) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
