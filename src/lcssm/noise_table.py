"""A tabulated noise schedule: the statistics of a forward SDE at a grid of times, for SDEs without a closed form.

An affine SDE has ``x_t = α_t x_0 + σ_t z`` in closed form. A non-affine one (:class:`lcssm.sde.TanhSDE`) does not,
but the same three numbers per time can be measured from its forward process started at the training data
(:func:`lcssm.noise_levels.tabulate`):

- ``alpha``: the mean map's slope, the mean derivative of the stochastic flow ``E[∂x_t/∂x_0]`` (α_t for an affine
  SDE);
- ``sigma``: the root of the conditional variance ``v(t) = E[Var(x_t | x_0)]`` per coordinate (σ_t);
- ``std``: the marginal standard deviation ``√Var(x_t)`` per coordinate (``√(α_t² Var(x_0) + σ_t²)``).

With ``alpha`` and ``sigma`` the non-affine SDE gets what the affine ones have: the preconditioning of
:class:`lcssm.models.precond.ScoreModel`, noise-level time sampling and a noise-level grid for the samplers. The
table is computed once when a run is created and kept in its spec, so a saved run never recomputes it differently.

Between grid times ``log α`` and ``log σ`` are interpolated linearly in ``log t``; below the first time σ follows
``√t`` (diffusion dominates the start of every SDE) and α stays at its first value; beyond the last time the last
values hold. The noise level ``ς_t = σ_t/α_t`` is made non-decreasing when the table is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lcssm.errors import ConfigError

__all__ = ["NoiseTable"]


@dataclass(frozen=True)
class NoiseTable:
    """``alpha``, ``sigma`` and ``std`` of a forward SDE at increasing ``times`` > 0 (module docstring)."""

    times: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.times)
        if n < 2 or any(len(v) != n for v in (self.alpha, self.sigma, self.std)):
            raise ConfigError(f"a noise table needs >= 2 times and as many alpha, sigma and std values; got "
                              f"{n}, {len(self.alpha)}, {len(self.sigma)}, {len(self.std)}")
        values = [*self.times, *self.alpha, *self.sigma, *self.std]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError("a noise table's times, alpha, sigma and std must be finite and > 0")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise ConfigError("a noise table's times must increase")

    @classmethod
    def of(cls, times: Tensor, alpha: Tensor, sigma: Tensor, std: Tensor) -> NoiseTable:
        """The table of 1-D tensors, with ``ς = σ/α`` made non-decreasing (a running maximum of ``log ς`` moves σ)."""
        alpha, sigma = alpha.double(), sigma.double()
        log_level = torch.cummax((sigma / alpha).log(), 0).values
        sigma = alpha * log_level.exp()
        return cls(*(tuple(float(v) for v in a) for a in (times, alpha, sigma, std)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> NoiseTable:
        """The table of :meth:`to_dict`'s mapping; ConfigError naming what is missing."""
        try:
            return cls(*(tuple(float(v) for v in d[k]) for k in ("times", "alpha", "sigma", "std")))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"a noise table needs lists times, alpha, sigma, std of numbers: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"times": list(self.times), "alpha": list(self.alpha), "sigma": list(self.sigma),
                "std": list(self.std)}

    def _grid(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        def log(values: tuple[float, ...]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64, device=like.device).log()

        return log(self.times), log(self.alpha), log(self.sigma)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(α_t, σ_t)`` at the times ``t`` (any shape; returned in t's dtype)."""
        log_t, log_a, log_s = self._grid(t)
        lt = t.to(torch.float64).clamp_min(1e-300).log()
        inside = lt.clamp(log_t[0], log_t[-1])
        i = torch.searchsorted(log_t, inside.contiguous()).clamp(1, len(log_t) - 1)
        w = (inside - log_t[i - 1]) / (log_t[i] - log_t[i - 1])
        a = log_a[i - 1] + w * (log_a[i] - log_a[i - 1])
        s = log_s[i - 1] + w * (log_s[i] - log_s[i - 1])
        s = torch.where(lt < log_t[0], log_s[0] + 0.5 * (lt - log_t[0]), s)
        return a.exp().to(t.dtype), s.exp().to(t.dtype)

    def time_at_level(self, level: Tensor) -> Tensor:
        """The time at which ``ς_t = σ_t/α_t`` equals ``level`` (float64): the inverse of the interpolation, clamped
        to the table's times (a flat stretch of ς gives its first time)."""
        log_t, log_a, log_s = self._grid(level)
        log_level = log_s - log_a
        target = level.to(torch.float64).log().clamp(log_level[0], log_level[-1])
        i = torch.searchsorted(log_level, target.contiguous()).clamp(1, len(log_t) - 1)
        gap = log_level[i] - log_level[i - 1]
        w = torch.where(gap > 0, (target - log_level[i - 1]) / gap.clamp_min(1e-300), torch.zeros_like(target))
        return (log_t[i - 1] + w * (log_t[i] - log_t[i - 1])).exp()
