"""``lcssm bench``: the objective and sampler benchmark (:mod:`lcssm.bench.suite`)."""

from __future__ import annotations

import argparse

from lcssm.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    from lcssm.bench.suite import add_arguments

    p = sub.add_parser(
        "bench",
        help="time the objectives against each other (MLP and U-Net), exact SM vs d, sampler overhead, memory",
        description="Print, from one run: step-time ratios LCSS / bare step, LCSS / DSM, SSM / LCSS, FD-SSM / "
        "LCSS, exact SM / LCSS (also as d grows), the overhead of the PC and ODE samplers over pure network "
        "evaluations, and the autograd-graph memory of each objective. Steps are interleaved round-robin after a "
        "warm-up; ratios are medians [quartiles] of per-round ratios.",
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lcssm.bench.suite import run_from_args

    return run_from_args(args)
