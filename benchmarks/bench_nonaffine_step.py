#!/usr/bin/env python
"""Seconds per training step of a non-affine SDE (local Gaussian center: simulation to s, the linearised last step)
against the affine VP step with the same network, batch and objective, side by side in one process.

    python benchmarks/bench_nonaffine_step.py [--repeats 30] [--threads 1] [--n-sim-steps 100] [--images]

Points: the point default's residual MLP on 2-D two spirals, batch 512 (``lcssm train --data 2spirals --sde S``).
``--images``: also the ``mnist`` preset's U-Net at nf 8 on 28x28 digits-sized noise, batch 64. Each step is the
loss (lcss, the run's time sampling and weighting) and its backward pass; the candidates are interleaved
round-robin and each ratio is the median of per-round ratios against VP. Prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from lcssm.bench.timing import paired_ratio, time_round_robin
from lcssm.config import apply_overrides
from lcssm.data.toy import two_spirals
from lcssm.experiments.pipeline import make_loss, with_noise_table
from lcssm.experiments.presets import ImagePreset, image_spec, point_spec
from lcssm.experiments.spec import SamplerSpec, SDESpec
from lcssm.models.precond import build_score_model


def _step(spec, x: torch.Tensor, dim: int | None):
    spec = with_noise_table(spec, lambda generator: x)  # the table a run of this data would measure
    sde = spec.sde.build()
    model = build_score_model(spec.model, sde, dim)
    loss_fn = make_loss(spec, sde)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, x, generator)
        loss.mean().backward()

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-sim-steps", type=int, default=None, help="the local center's simulation steps (default: "
                   "the spec's)")
    p.add_argument("--images", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = [("points, res_mlp, batch 512", lambda s: point_spec(s), two_spirals(512, torch.Generator().manual_seed(0)),
             2)]
    if args.images:
        def image(s: str):
            spec = image_spec(ImagePreset(preset="mnist", nf=8, precond="score_sde"))
            return dataclasses.replace(
                spec, sde=SDESpec(name=s).resolved(), sampler=SamplerSpec(name="pc"),
                objective=dataclasses.replace(spec.objective, center="marginal" if s == "vp" else "local"))
        sets.append(("mnist U-Net nf 8, batch 64", image, 2 * torch.rand(64, 1, 28, 28) - 1, None))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} interleaved rounds")
    print("| setting | SDE | ms / step (median, IQR) | ratio to VP (median of rounds) |")
    print("|---|---|---|---|")
    for label, make, x, dim in sets:
        steps = {}
        for name in ("vp", "tanh", "student"):
            spec = make(name)
            if args.n_sim_steps is not None and name != "vp":
                spec = apply_overrides(spec, [f"objective.n_sim_steps={args.n_sim_steps}"])
            steps[name] = _step(spec, x, dim)
        stats = time_round_robin(steps, repeats=args.repeats, warmup=3)
        for name, st in stats.items():
            ratio = paired_ratio(st, stats["vp"])
            print(f"| {label} | {name} | {1e3 * st.median:.2f} ({1e3 * st.iqr:.2f}) | {ratio.median:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
