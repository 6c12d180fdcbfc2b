"""Overhead of the fixed-grid samplers over the network evaluations they make, side by side in one process.

    python benchmarks/bench_sampler_overhead.py [--preset mnist] [--batch 64] [--nfe 35] [--repeats 3]

For each deterministic solver: the wall time of ``lcssm.sampling.sample`` with the preset's (randomly initialised)
score network, and the time of the same number of bare network calls on the same batch, interleaved, best of
``--repeats``. The overhead is ``sampler / network − 1``: the schedule, the σ-parametrisation and the solver's
tensor arithmetic. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from lcssm.experiments.presets import ImagePreset, image_spec
from lcssm.models.precond import build_score_model
from lcssm.sampling import sample

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpm3")


def _best_of_interleaved(fns, repeats: int) -> list[float]:
    """The best wall time of each function over ``repeats`` rounds, the functions alternating within a round (so
    that a change of machine load hits both sides alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            began = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - began)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nfe", type=int, default=35)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    spec = image_spec(ImagePreset(preset=args.preset))
    sde = spec.sde.build()
    model = build_score_model(spec.model, sde).eval().requires_grad_(False)
    shape = (args.batch, *spec.data.shape)
    x = sde.prior_sample(shape)
    t = torch.full((args.batch,), 0.5)
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters, batch {args.batch}, "
          f"{torch.get_num_threads()} torch thread(s)\n")
    print("| sampler | NFE | sampler s | network calls s | overhead |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        model(x, t)  # warm-up
        for name in SOLVERS:
            nfe = sample(model, sde, x, sampler=name, nfe=args.nfe)[1]
            run, calls = _best_of_interleaved([lambda name=name: sample(model, sde, x, sampler=name, nfe=args.nfe),
                                               lambda nfe=nfe: [model(x, t) for _ in range(nfe)]], args.repeats)
            print(f"| {name} | {nfe} | {run:.3f} | {calls:.3f} | {100 * (run / calls - 1):+.1f} % |", flush=True)


if __name__ == "__main__":
    main()
