"""The four checkerboard runs behind ``table1`` and ``fig8`` (paper App. B): SSM, FD-SSM, DSM and LCSS on the
energy MLP, same seed, steps, batch and Langevin sampler, through :func:`lcssm.experiments.toy.run_toy`.

Sizes: ``full`` is the toy ``paper`` preset (batch 10k, 20k steps = 200 epochs of 1M points, Langevin ε = 0.1,
1000 steps), ``quick`` the toy ``quick`` preset shortened to fit a few minutes for all four runs on 2 cores,
``smoke`` a few steps. The runs of one size and seed are computed once per process (``ctx.cache``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from lcssm.reproduce import Context

OBJECTIVES = ("ssm", "fdssm", "dsm", "lcss")
LABELS = {"ssm": "SSM", "fdssm": "FD-SSM", "dsm": "DSM", "lcss": "LCSS"}

SIZES = {
    "smoke": {"preset": "quick", "steps": 30, "batch_size": 128, "hidden": 32, "n_samples": 400,
              "langevin_steps": 20, "score_points": 500},
    "quick": {"preset": "quick", "steps": 1500, "batch_size": 1000, "hidden": 300, "n_samples": 2000,
              "langevin_steps": 1000, "score_points": 20_000},
    "full": {"preset": "paper", "steps": None, "batch_size": None, "hidden": None, "n_samples": None,
             "langevin_steps": None, "score_points": 100_000},
}


def toy_config(ctx: Context, objective: str):
    """The ToyConfig of one run: the size's preset with its overrides, this objective and seed."""
    from lcssm.experiments.toy import TOY_PRESETS

    s = ctx.pick(SIZES)
    cfg = copy.deepcopy(TOY_PRESETS[s["preset"]])
    changes = {k: s[k] for k in ("hidden", "n_samples", "langevin_steps") if s[k] is not None}
    cfg = dataclasses.replace(cfg, objective=objective, data="checkerboard", model="energy", **changes)
    train = {k: s[k] for k in ("steps", "batch_size") if s[k] is not None}
    cfg.train = dataclasses.replace(cfg.train, seed=ctx.seed, device=str(ctx.device), **train)
    return cfg


def _losses(run_dir: Path) -> list[float]:
    path = run_dir / "loss.csv"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines()[1:]:
        try:
            out.append(float(line.split(",")[1]))
        except (IndexError, ValueError):
            continue
    return out


def score_error(model: torch.nn.Module, sigma: float, n: int, seed: int) -> dict[str, float]:
    """Relative and absolute mean squared error of the model's score against the exact score of the
    σ-smoothed checkerboard (autograd of :func:`lcssm.data.toy.checkerboard_logpdf`, float64), at n points
    drawn from the σ-smoothed checkerboard."""
    from lcssm.data.toy import checkerboard, checkerboard_logpdf
    from lcssm.device import make_generator

    g = make_generator(seed)
    x = (checkerboard(n, g) + sigma * torch.randn(n, 2, generator=g)).double().requires_grad_(True)
    (target,) = torch.autograd.grad(checkerboard_logpdf(x, sigma).sum(), x)
    errs, refs = [], []
    for xb, tb in zip(x.detach().float().split(10_000), target.split(10_000)):
        with torch.no_grad():
            s = model(xb).double()
        errs.append((s - tb).pow(2).sum(1))
        refs.append(tb.pow(2).sum(1))
    err, ref = torch.cat(errs), torch.cat(refs)
    finite = torch.isfinite(err)
    mse = float(err[finite].mean()) if finite.any() else math.nan
    return {"score_mse": mse, "score_rel_error": mse / float(ref.mean()), "score_nonfinite": int((~finite).sum())}


def toy_runs(ctx: Context, runs_dir: Path | None = None) -> dict[str, dict]:
    """Run (or fetch from ``ctx.cache``) the four runs; returns per objective: ``dir``, ``config``,
    ``metrics`` (run_toy's plus the score error), ``losses``, ``model`` (None if diverged) and ``diverged``
    (None or a message naming the step)."""
    key = ("toy_runs", ctx.size, ctx.seed, str(ctx.device))
    if key in ctx.cache:
        return ctx.cache[key]
    from lcssm.checkpoint import load_run
    from lcssm.experiments.toy import build_model, run_toy
    from lcssm.train import NonFiniteLossError

    root = runs_dir or ctx.out_dir / "runs"
    out: dict[str, dict] = {}
    for objective in OBJECTIVES:
        cfg = toy_config(ctx, objective)
        run_dir = root / objective
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the trainer refuses to start over a previous run's checkpoints
        entry = {"dir": run_dir, "config": cfg, "diverged": None, "model": None, "metrics": {}}
        try:
            entry["metrics"] = run_toy(cfg, run_dir, progress=ctx.progress)
            _, model = load_run(run_dir, model_factory=lambda _c, cfg=cfg: build_model(cfg, 2))
            entry["model"] = model
            entry["metrics"].update(score_error(model, cfg.sigma, ctx.pick(SIZES)["score_points"], ctx.seed + 17))
        except NonFiniteLossError as e:
            entry["diverged"] = f"diverged at step {e.step}"
        entry["losses"] = _losses(run_dir)
        out[objective] = entry
    ctx.cache[key] = out
    return out


def smoothed_mean(y: list[float], window: int) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    if len(a) <= window:
        return a
    return np.convolve(a, np.ones(window) / window, mode="valid")
