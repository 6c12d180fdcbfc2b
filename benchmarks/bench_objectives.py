#!/usr/bin/env python
"""Objective and sampler benchmark (see lcssm.bench.suite): step-time ratios between the score-matching
objectives on an MLP and a U-Net, exact SM / LCSS as d grows, sampler overhead over pure network evaluations
(PC and ODE), and the autograd-graph memory of each objective. All ratios come from one run, interleaved.

    python benchmarks/bench_objectives.py --size quick --threads 2 [--json out.json]

Same as ``lcssm bench``.
"""

import sys

from lcssm.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
