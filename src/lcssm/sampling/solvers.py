"""Fixed-grid solvers of the σ-parametrised probability-flow ODE / reverse SDE, and :func:`sample`, their one entry.

Each solver walks a decreasing grid ``sigmas`` = ς_0 > … > ς_{n−1} > ς_n = 0
(:func:`lcssm.sampling.schedules.noise_schedule`)
with a denoiser ``D(y, ς)`` (:class:`lcssm.sampling.schedules.Denoiser`) in ``y = x/α_t``, where the ODE is
``dy/dς = d(y, ς) = (y − D(y, ς))/ς``. The step to ς = 0 is always one Euler step, ``y ← D(y, ς_{n−1})`` (Tweedie).

* ``euler``: ``y ← y + (ς_{i+1} − ς_i)·d`` (first order; DDIM for VP, Song et al. 2021, "Denoising Diffusion
  Implicit Models", in the σ-parametrisation);
* ``heun``: Karras et al. (2022), Algorithm 1: Euler, then the trapezoidal correction, skipped on the last step
  (2n − 1 evaluations);
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2) in λ = −log ς: exponential integrator
  of the data prediction, second order by the previous step's D;
* ``dpm3``: single-step DPM-Solver-3 (Lu et al. 2022, "DPM-Solver", Alg. 2 with r₁ = 1/3, r₂ = 2/3; noise
  prediction ε = d): three evaluations a step; NFE not of the form 3k + 1 ends with one DPM-Solver-2 or -1 step;
* ``edm``: Karras et al. (2022), Algorithm 2 (churn: noise added back to raise ς_i to ς̂ = (1 + γ_i)ς_i, then a
  Heun step from ς̂), ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` as there; ς̂ is capped at ς_T;
* ``euler_ancestral``: Euler to ``ς_down = √(ς_{i+1}² − ς_up²)``, then fresh noise of std
  ``ς_up = ς_{i+1}·√(1 − ς_{i+1}²/ς_i²)``: the ancestral (DDPM) step of VE in the σ-parametrisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lcssm.errors import ConfigError
from lcssm.sampling.schedules import SCHEDULES, Denoiser, check_affine, noise_schedule
from lcssm.sde import SDE, TimeScoreFn

__all__ = ["SOLVERS", "Solver", "sample", "solve"]

DenoiseFn = Callable[[Tensor, float], Tensor]


def _d(denoise: DenoiseFn, y: Tensor, level: float) -> Tensor:
    """The ODE's slope ``(y − D(y, ς))/ς`` (= ε, the noise prediction)."""
    return (y - denoise(y, level)) / level


def _steps(sigmas: list[float], progress: bool, desc: str):
    return tqdm(range(len(sigmas) - 1), desc=desc, disable=not progress, leave=False)


def euler(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, progress: bool = False, **_) -> Tensor:
    """Euler's method on ``dy/dς = d`` (module docstring)."""
    for i in _steps(sigmas, progress, "euler"):
        y = y + (sigmas[i + 1] - sigmas[i]) * _d(denoise, y, sigmas[i])
    return y


def heun(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, progress: bool = False, **_) -> Tensor:
    """Karras et al. (2022), Algorithm 1: Heun's second-order method, Euler on the last step (to ς = 0)."""
    for i in _steps(sigmas, progress, "heun"):
        y = _heun_step(denoise, y, sigmas[i], sigmas[i + 1])
    return y


def _heun_step(denoise: DenoiseFn, y: Tensor, s: float, s_next: float) -> Tensor:
    d = _d(denoise, y, s)
    y_next = y + (s_next - s) * d
    if s_next == 0:
        return y_next
    return y + (s_next - s) * 0.5 * (d + _d(denoise, y_next, s_next))


def dpmpp_2m(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, progress: bool = False, **_) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): with λ = −log ς and h_i = λ_{i+1} − λ_i,
    ``y ← (ς_{i+1}/ς_i)·y + (1 − e^{−h_i})·D̃`` where ``D̃ = (1 + 1/(2r))D_i − D_{i−1}/(2r)``, r = h_{i−1}/h_i
    (``D̃ = D_i`` on the first step and on the step to ς = 0)."""
    old = None
    for i in _steps(sigmas, progress, "dpm++(2m)"):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = denoise(y, s)
        if s_next == 0:
            y = den
            break
        h = math.log(s / s_next)
        blend = den
        if old is not None:
            r = math.log(sigmas[i - 1] / s) / h
            blend = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        y = (s_next / s) * y - math.expm1(-h) * blend
        old = den
    return y


def _dpm_step(denoise: DenoiseFn, y: Tensor, s: float, t: float, order: int) -> Tensor:
    """One single-step DPM-Solver step of ``order`` 1, 2 (r₁ = ½) or 3 (r₁ = ⅓, r₂ = ⅔) from ς = s to ς = t > 0
    (Lu et al. 2022, Alg. 1-2, noise prediction, α = 1 and σ = ς in the σ-parametrisation, λ = −log ς)."""
    h = math.log(s / t)
    eps = _d(denoise, y, s)
    if order == 1:
        return y - t * math.expm1(h) * eps
    if order == 2:
        s1 = s * math.exp(-0.5 * h)
        u = y - s1 * math.expm1(0.5 * h) * eps
        return y - t * math.expm1(h) * _d(denoise, u, s1)
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
    u1 = y - s1 * math.expm1(r1 * h) * eps
    d1 = _d(denoise, u1, s1) - eps
    u2 = y - s2 * math.expm1(r2 * h) * eps - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
    d2 = _d(denoise, u2, s2) - eps
    return y - t * math.expm1(h) * eps - (t / r2) * (math.expm1(h) / h - 1) * d2


def dpm3(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, orders: list[int], progress: bool = False,
         **_) -> Tensor:
    """Single-step DPM-Solver of the given per-step ``orders`` (3 = DPM-Solver-3) over ``sigmas``; the step to
    ς = 0 is Tweedie denoising."""
    for i in _steps(sigmas, progress, "dpm-solver-3"):
        s, t = sigmas[i], sigmas[i + 1]
        y = denoise(y, s) if t == 0 else _dpm_step(denoise, y, s, t, orders[i])
    return y


def edm(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, generator: torch.Generator | None = None,
        s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
        level_max: float = math.inf, progress: bool = False, **_) -> Tensor:
    """Karras et al. (2022), Algorithm 2: at each ς_i in [s_tmin, s_tmax], γ_i = min(s_churn/N, √2 − 1) (N the
    number of steps), ``ŷ = y + √(ς̂² − ς_i²)·s_noise·z`` at ``ς̂ = (1 + γ_i)ς_i`` (capped at ``level_max``), then a
    Heun step from ς̂ to ς_{i+1} (Euler on the last step)."""
    n = len(sigmas) - 1
    for i in _steps(sigmas, progress, "edm"):
        s = sigmas[i]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = min(s * (1 + gamma), max(level_max, s))
        if s_hat > s:
            z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            y = y + math.sqrt(s_hat**2 - s**2) * s_noise * z
        y = _heun_step(denoise, y, s_hat, sigmas[i + 1])
    return y


def euler_ancestral(denoise: DenoiseFn, y: Tensor, sigmas: list[float], *, generator: torch.Generator | None = None,
                    progress: bool = False, **_) -> Tensor:
    """Ancestral Euler (module docstring): deterministic Euler to ς_down, then noise of std ς_up."""
    for i in _steps(sigmas, progress, "euler ancestral"):
        s, s_next = sigmas[i], sigmas[i + 1]
        up = s_next * math.sqrt(max(0.0, 1 - (s_next / s) ** 2))
        down = math.sqrt(max(0.0, s_next**2 - up**2))
        y = y + (down - s) * _d(denoise, y, s)
        if s_next > 0:
            y = y + up * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return y


def _dpm3_plan(nfe: int) -> tuple[int, dict]:
    """Levels and per-step orders of ``dpm3`` for ``nfe``: ⌊(nfe − 1)/3⌋ third-order steps, the remainder as one
    step of order 1 or 2, the final evaluation Tweedie denoising."""
    k, rest = divmod(nfe - 1, 3)
    orders = [3] * k + ([rest] if rest else [])
    return len(orders) + 1, {"orders": orders}


@dataclass(frozen=True)
class Solver:
    """A fixed-grid solver: ``run(denoise, y, sigmas, **options)``; ``plan(nfe) -> (n levels, extra options)``;
    ``min_nfe`` the least NFE it can spend; ``stochastic`` whether it draws noise; ``options`` the keyword options
    it takes (the run spec's fields of the same names)."""

    run: Callable[..., Tensor]
    plan: Callable[[int], tuple[int, dict]]
    min_nfe: int
    stochastic: bool
    help: str
    options: tuple[str, ...] = ()


def _levels_per_nfe(nfe: int) -> tuple[int, dict]:
    """One level per score evaluation (euler, dpmpp_2m, euler_ancestral)."""
    return nfe, {}


def _levels_heun(nfe: int) -> tuple[int, dict]:
    """Two evaluations per step but the last: (nfe + 1)//2 levels (heun, edm; nfe = 2n − 1)."""
    return (nfe + 1) // 2, {}


#: the fixed-grid solvers by name, in the order they are offered
SOLVERS: dict[str, Solver] = {
    "euler": Solver(run=euler, plan=_levels_per_nfe, min_nfe=1, stochastic=False,
                    help="Euler (DDIM for VP), nfe levels"),
    "heun": Solver(run=heun, plan=_levels_heun, min_nfe=1, stochastic=False,
                   help="Heun, Karras et al. 2022 Alg. 1, (nfe+1)//2 levels (nfe = 2n-1)"),
    "dpmpp_2m": Solver(run=dpmpp_2m, plan=_levels_per_nfe, min_nfe=1, stochastic=False,
                       help="DPM-Solver++(2M), Lu et al. 2022, nfe levels"),
    "dpm3": Solver(run=dpm3, plan=_dpm3_plan, min_nfe=1, stochastic=False,
                   help="single-step DPM-Solver-3, Lu et al. 2022 (nfe = 3k+1)"),
    "edm": Solver(run=edm, plan=_levels_heun, min_nfe=1, stochastic=True,
                  help="EDM stochastic sampler (churn), Karras et al. 2022 Alg. 2",
                  options=("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "euler_ancestral": Solver(run=euler_ancestral, plan=_levels_per_nfe, min_nfe=1, stochastic=True,
                              help="ancestral Euler (DDPM-like)"),
}


def solve(denoise: DenoiseFn, y: Tensor, sigmas: list[float] | Tensor, sampler: str, **options) -> Tensor:
    """Run the solver ``sampler`` over the decreasing grid ``sigmas`` (ending in 0) from ``y`` with ``denoise``."""
    if sampler not in SOLVERS:
        raise ConfigError(f"unknown solver {sampler!r}; valid: {', '.join(SOLVERS)}")
    grid = [float(v) for v in (sigmas.tolist() if isinstance(sigmas, Tensor) else sigmas)]
    if len(grid) < 2 or grid[-1] != 0 or any(b >= a for a, b in zip(grid, grid[1:])) or grid[-2] <= 0:
        raise ConfigError(f"sigmas must decrease strictly to a final 0, got {grid}")
    return SOLVERS[sampler].run(denoise, y, grid, **options)


@torch.no_grad()
def sample(score_fn: TimeScoreFn, sde: SDE, x: Tensor, *, sampler: str, nfe: int, schedule: str = "karras",
           t_min: float = 1e-3, rho: float = 7.0, generator: torch.Generator | None = None, progress: bool = False,
           **options) -> tuple[Tensor, int]:
    """Sample an affine SDE's model with a fixed-grid solver of :data:`SOLVERS` in ``nfe`` score evaluations.

    ``x``: the starting tensor at t = T (prior scale included); ``score_fn(x, t)`` the time-conditional score. The
    grid is ``schedule`` (:data:`lcssm.sampling.schedules.SCHEDULES`; ``rho`` for ``karras``) from ς_T to ς_{t_min},
    then
    0, with as many levels as ``sampler`` turns ``nfe`` into (``heun``/``edm``: (nfe + 1)//2, so an even nfe
    spends nfe − 1). ``options`` go to the solver (``edm``: ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``);
    ``generator`` draws the stochastic solvers' noise. Returns ``(samples, nfe)``, the number of score
    evaluations actually made. ConfigError for an unknown sampler or schedule, a bad nfe, or a non-affine SDE.
    """
    check_affine(sde)
    if sampler not in SOLVERS:
        raise ConfigError(f"unknown sampler {sampler!r} for lcssm.sampling.sample; valid: {', '.join(SOLVERS)}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    solver = SOLVERS[sampler]
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < solver.min_nfe:
        raise ConfigError(f"nfe must be an integer >= {solver.min_nfe} for {sampler}, got {nfe!r}")
    n, extra = solver.plan(nfe)
    sigmas = noise_schedule(sde, n, schedule, t_min=t_min, rho=rho)
    denoise = Denoiser(score_fn, sde)
    y = solve(denoise, denoise.to_y(x), sigmas, sampler, generator=generator, progress=progress,
              level_max=denoise.level_max, **extra, **options)
    return y, denoise.nfe
