"""The four checkerboard runs behind ``table1`` and ``fig8`` (paper App. B): SSM, FD-SSM, DSM and LCSS on the
energy MLP, same seed, steps, batch and Langevin sampler: each a :func:`lcssm.experiments.presets.toy_spec` run
trained, sampled and evaluated by :func:`lcssm.experiments.pipeline.train_run`.

Sizes: ``full`` is the toy ``paper`` preset (batch 10k, 20k steps = 200 epochs of 1M points, Langevin ε = 0.1,
1000 steps), ``quick`` the toy ``quick`` preset shortened to fit a few minutes for all four runs on 2 cores,
``smoke`` a few steps. The runs of one size and seed are computed once per process (``ctx.cache``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch

from lcssm.reproduce import Context

OBJECTIVES = ("ssm", "fdssm", "dsm", "lcss")
LABELS = {"ssm": "SSM", "fdssm": "FD-SSM", "dsm": "DSM", "lcss": "LCSS"}

SETTINGS = {
    "smoke": {"preset": "quick", "steps": 30, "batch_size": 128, "hidden": 32, "n_samples": 400,
              "langevin_steps": 20, "score_points": 500},
    "quick": {"preset": "quick", "steps": 1500, "batch_size": 1000, "hidden": 300, "n_samples": 2000,
              "langevin_steps": 1000, "score_points": 20_000},
    "full": {"preset": "paper", "steps": None, "batch_size": None, "hidden": None, "n_samples": None,
             "langevin_steps": None, "score_points": 100_000},
}


def toy_config(ctx: Context, objective: str):
    """The :class:`~lcssm.experiments.spec.RunSpec` of one run: the size's toy preset with its overrides, this
    objective and seed, the checkerboard and the energy MLP."""
    from lcssm.config import apply_overrides
    from lcssm.experiments.presets import toy_spec

    s = ctx.pick(SETTINGS)
    spec = toy_spec(s["preset"])
    overrides = [f"objective.name={objective}", "data.source=checkerboard", "model.arch=energy_mlp",
                 f"train.seed={ctx.seed}", f"sampler.seed={ctx.seed}", f"train.device={ctx.device}"]
    keys = {"hidden": "model.hidden", "n_samples": "sampler.n_samples", "langevin_steps": "sampler.langevin_steps",
            "steps": "train.steps", "batch_size": "train.batch_size"}
    overrides += [f"{key}={s[name]}" for name, key in keys.items() if s[name] is not None]
    return apply_overrides(spec, overrides)


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
    """Run (or fetch from ``ctx.cache``) the four runs; returns per objective: ``dir``, ``config`` (the RunSpec),
    ``metrics`` (train_run's train and sample records in one dict, plus the score error), ``losses``, ``model``
    (the EMA :class:`~lcssm.models.precond.ScoreModel` on the CPU, None if diverged) and ``diverged`` (None or a
    message naming the step)."""
    key = ("toy_runs", ctx.size, ctx.seed, str(ctx.device))
    if key in ctx.cache:
        return ctx.cache[key]
    from lcssm.experiments.pipeline import open_run, train_run
    from lcssm.training.loop import NonFiniteLossError

    root = runs_dir or ctx.out_dir / "runs"
    out: dict[str, dict] = {}
    for objective in OBJECTIVES:
        spec = toy_config(ctx, objective)
        run_dir = root / objective
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the trainer refuses to start over a previous run's checkpoints
        entry = {"dir": run_dir, "config": spec, "diverged": None, "model": None, "metrics": {}}
        try:
            records = train_run(spec, run_dir, progress=ctx.progress)
            entry["metrics"] = _flat_metrics(records)
            model = open_run(run_dir, "cpu").model
            entry["model"] = model
            entry["metrics"].update(score_error(model, spec.objective.sigma, ctx.pick(SETTINGS)["score_points"],
                                                ctx.seed + 17))
        except NonFiniteLossError as e:
            entry["diverged"] = f"diverged at step {e.step}"
        entry["losses"] = _losses(run_dir)
        out[objective] = entry
    ctx.cache[key] = out
    return out


def _flat_metrics(records: dict) -> dict:
    """train_run's ``{"train": ..., "sample": ...}`` as one dict: the train record, then the sample record (its
    ``seconds`` as ``sample_seconds``)."""
    sample = dict(records.get("sample", {}))
    if "seconds" in sample:
        sample["sample_seconds"] = sample.pop("seconds")
    return {**records["train"], **sample}


def smoothed_mean(y: list[float], window: int) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    if len(a) <= window:
        return a
    return np.convolve(a, np.ones(window) / window, mode="valid")
