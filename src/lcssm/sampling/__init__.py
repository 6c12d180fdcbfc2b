"""Samplers driven by a score function (never a model object), one module per family, each algorithm taking the
starting tensor ``x``:

* :mod:`~lcssm.sampling.langevin` — :func:`langevin` (paper Eq. 31) and :func:`mala` with a score ``s(x)``;
  :func:`annealed_langevin` over a noise ladder with a noise-conditional score ``s(x, sigma)`` (NCSNv2, Alg. 1).
* :mod:`~lcssm.sampling.reverse` — :func:`pc_sample`, predictor–corrector sampling of the reverse-time SDE with a
  time-conditional score ``s(x, t)`` (Song et al. 2021, Alg. 1–3), and :func:`denoise_step`.
* :mod:`~lcssm.sampling.ode` — :func:`ode_sample`, the probability-flow ODE (Song et al. 2021, Eq. 13), through
  :func:`solve_ode` (adaptive Dormand–Prince in torch, :mod:`~lcssm.sampling.rk45`, or scipy's other methods).
* :mod:`~lcssm.sampling.solvers` — :func:`sample`, the fixed-grid solvers (Euler, Heun, DPM-Solver++(2M),
  DPM-Solver-3, EDM's churn sampler, ancestral Euler) over a noise schedule of :mod:`~lcssm.sampling.schedules`.
* :mod:`~lcssm.sampling.registry` — every sampler of a run by name (``SAMPLERS``) and :func:`draw`, the one loop
  over batches the pipelines use.

``t`` and ``sigma`` are passed to the score function as tensors of shape (B,). Every sampler draws its noise
from ``generator`` (on the device of ``x``) and runs under ``torch.no_grad()``. Mixed precision, eval mode and
EMA weights are the caller's business: wrap the model in the score function. This package's namespace is its
public API; code inside lcssm imports from the defining module.
"""

from lcssm.sampling.langevin import annealed_langevin, geometric_sigmas, langevin, mala, noise_conditional_score
from lcssm.sampling.ode import ODE_METHODS, ode_sample, solve_ode
from lcssm.sampling.reverse import CORRECTORS, PREDICTORS, denoise_step, pc_sample
from lcssm.sampling.solvers import SOLVERS, sample

__all__ = [
    "CORRECTORS",
    "ODE_METHODS",
    "PREDICTORS",
    "SOLVERS",
    "annealed_langevin",
    "denoise_step",
    "geometric_sigmas",
    "langevin",
    "mala",
    "noise_conditional_score",
    "ode_sample",
    "pc_sample",
    "sample",
    "solve_ode",
]
