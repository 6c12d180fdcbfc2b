"""Noise schedules apart from solvers, and the σ-parametrisation that lets one solver set serve VE, VP and subVP.

An affine SDE has the marginal ``x_t = α_t x_0 + σ_t z``. With ``y = x/α_t`` and ``ς = σ_t/α_t`` this is
``y = x_0 + ς z``: every affine SDE becomes the variance-exploding process of Karras et al. (2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Sec. 2 and App. B), whose probability-flow ODE is
``dy/dς = (y − D(y, ς))/ς`` with the denoiser ``D(y, ς) = y + ς²·∇_y log q_ς(y)`` and
``∇_y log q_ς(y) = α_t·s(α_t y, t)`` (t the time at which ς_t = ς). A solver (:mod:`lcssm.sampling.solvers`) walks a
decreasing sequence of noise levels ς_0 > … > ς_{n−1} > 0 followed by 0 (the last step, to ς = 0, is Tweedie
denoising); a schedule (:func:`noise_schedule`) chooses the levels.

Schedules (n levels between ς_max = ς_T and ς_min = ς_{t_min}, then 0):

* ``karras``: ``(ς_max^{1/ρ} + i/(n−1)·(ς_min^{1/ρ} − ς_max^{1/ρ}))^ρ`` (Karras et al. 2022, Eq. 5, ρ = 7);
* ``log_sigma``: log-uniform in ς (for VE, whose σ_t is geometric in t, this is also uniform in t);
* ``uniform_t``: ``ς_{t_i}`` at ``t_i = linspace(T, t_min, n)``, the SDE's own time grid (that of the PC sampler
  and score_sde's probability-flow discretisation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.noise_levels import level_of, time_of
from lcssm.sde import SDE, TimeScoreFn
from lcssm.tensors import bcast

__all__ = ["SCHEDULES", "Denoiser", "check_affine", "level_of", "noise_schedule", "time_of"]

SCHEDULES = ("karras", "log_sigma", "uniform_t")


def check_affine(sde: SDE, what: str = "the sigma-parametrised samplers") -> None:
    """ConfigError unless ``sde`` has a closed-form Gaussian marginal (VE, VP, subVP): a non-affine SDE (tanh) has no
    ``α_t``, ``σ_t``, so no noise level and no denoiser; its runs sample with ``pc`` or ``ode``."""
    if not getattr(sde, "has_marginal", False):
        raise ConfigError(f"{what} need an SDE with a closed-form Gaussian marginal (ve, vp, subvp); {sde!r} has "
                          "none: use the pc or ode sampler")


def noise_schedule(sde: SDE, n: int, schedule: str = "karras", *, t_min: float = 1e-3, rho: float = 7.0) -> Tensor:
    """``n`` decreasing noise levels from ``ς_T`` to ``ς_{t_min}`` by ``schedule`` (module docstring), then 0:
    float64, shape (n + 1,). ``n = 1`` gives ``[ς_T, 0]`` (one denoising step). The levels are the SDE's closed
    form or its noise table (a non-affine SDE; :mod:`lcssm.noise_table`)."""
    if not getattr(sde, "has_levels", False):
        raise ConfigError(f"{sde!r} has no noise levels sigma_t/alpha_t (no closed form, no noise table): use the pc "
                          "or ode sampler")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of noise levels must be an integer >= 1, got {n!r}")
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")
    if not rho > 0:
        raise ConfigError(f"rho must be > 0, got {rho!r}")
    hi, lo = level_of(sde, torch.tensor([sde.T, t_min], dtype=torch.float64)).tolist()
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    if schedule == "karras":
        sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    elif schedule == "log_sigma":
        sigmas = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
    elif schedule == "uniform_t":
        sigmas = level_of(sde, sde.T + ramp * (t_min - sde.T))
    else:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class Denoiser:
    """``D(y, ς) = y + ς²·α_t·s(α_t y, t)`` of the σ-parametrised affine SDE (module docstring), ``ς`` a Python
    float; counts its score evaluations in ``nfe``. The time of each level is found once (:func:`time_of`) and
    cached. ``to_y(x)`` and ``to_x(y, ς)`` convert the state at T and at the end (α = 1 at ς = 0)."""

    def __init__(self, score_fn: TimeScoreFn, sde: SDE) -> None:
        check_affine(sde)
        self.score_fn, self.sde, self.nfe = score_fn, sde, 0
        self._times: dict[float, tuple[float, float]] = {}
        self.level_max = float(level_of(sde, torch.tensor([sde.T], dtype=torch.float64)))

    def coefficients(self, level: float) -> tuple[float, float]:
        """``(t, α_t)`` of the noise level ``level``."""
        if level not in self._times:
            t = time_of(self.sde, torch.tensor([level], dtype=torch.float64))
            alpha, _ = self.sde.marginal_coefficients(t)
            self._times[level] = (float(t), float(alpha))
        return self._times[level]

    def __call__(self, y: Tensor, level: float) -> Tensor:
        t, alpha = self.coefficients(level)
        tt = torch.full((y.shape[0],), t, device=y.device, dtype=y.dtype)
        self.nfe += 1
        return y + (level**2 * alpha) * self.score_fn(alpha * y, tt)

    def to_y(self, x: Tensor) -> Tensor:
        """The state at T in the σ-parametrisation, ``x_T/α_T``."""
        alpha, _ = self.sde.marginal_coefficients(torch.full((x.shape[0],), self.sde.T, dtype=torch.float64))
        return x / bcast(alpha.to(device=x.device, dtype=x.dtype), x)
