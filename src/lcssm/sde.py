"""Forward SDEs ``dx = f(x, t)dt + g(t)dw`` on t ∈ [0, T] (Song et al. 2021, "Score-based generative modeling
through stochastic differential equations", Sec. 3.4 and App. B).

The affine SDEs (VE, VP, subVP) have Gaussian marginals ``p_t(x_t | x0) = N(α_t x0, σ_t² I)`` available in
closed form through :meth:`SDE.marginal`. Every SDE can also be simulated forward (:meth:`SDE.simulate`),
which is all that the ``simulated`` Stein center needs.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lcssm.errors import ConfigError

__all__ = ["SDE", "SDES", "SubVPSDE", "VESDE", "VPSDE", "get_sde"]


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _as_time(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def _standard_normal_logp(z: Tensor, std: float) -> Tensor:
    """log N(z; 0, std² I) summed over the data dims, shape (B,)."""
    d = z[0].numel()
    return -0.5 * d * math.log(2 * math.pi * std**2) - z.flatten(1).pow(2).sum(1) / (2 * std**2)


class SDE(abc.ABC):
    """Interface consumed generically by the losses, samplers and the likelihood."""

    T: float = 1.0
    #: whether :meth:`marginal` is available in closed form (affine drift and t-only diffusion)
    has_marginal: bool = True

    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` (shape of x) and diffusion ``g(t)`` (shape (B,))."""

    @abc.abstractmethod
    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``α_t x0`` (shape of x0) and std ``σ_t`` (shape (B,)) of ``p_t(x_t | x0)``."""

    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, std² I) at time T."""

    def prior_sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Draw from the prior N(0, prior_std² I)."""
        return self.prior_std() * torch.randn(tuple(shape), generator=generator, device=device)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior, per sample (B,)."""
        return _standard_normal_logp(z, self.prior_std())

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)`` alone, shape (B,)."""
        return self.sde(torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device), t)[1]

    def simulate(
        self, x0: Tensor, t: Tensor | float, *, n_steps: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``x_t`` by Euler–Maruyama simulation of the forward SDE from ``x0`` (per-sample end time t).

        Every sample takes ``n_steps`` steps of its own size ``t_i / n_steps``. Needs no closed-form
        transition kernel, so it works for non-affine drifts too.
        """
        t = _as_time(t, x0)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        dt = t / n_steps
        x = x0
        for k in range(n_steps):
            drift, g = self.sde(x, k * dt)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + drift * _bcast(dt, x) + _bcast(g * dt.sqrt(), x) * noise
        return x


class VESDE(SDE):
    """Variance exploding: σ(t) = σ_min(σ_max/σ_min)^t, f = 0, g = σ(t)·√(2 ln(σ_max/σ_min)).

    The marginal std is σ(t) (score_sde's convention, which ignores the σ_min² offset at t = 0).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t / self.T * self._log_ratio)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _as_time(t, x)
        return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x0, self.sigma(_as_time(t, x0))

    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class VPSDE(SDE):
    """Variance preserving: β(t) = β_min + t(β_max − β_min), f = −½β(t)x, g = √β(t).

    Marginal: α_t = exp(−½∫₀ᵗβ), σ_t = √(1 − α_t²).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ConfigError(f"{type(self).__name__} needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t / self.T * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """∫₀ᵗ β(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(_as_time(t, x))
        return -0.5 * _bcast(beta, x) * x, beta.sqrt()

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ib = self.integrated_beta(_as_time(t, x0))
        alpha = torch.exp(-0.5 * ib)
        return _bcast(alpha, x0) * x0, torch.sqrt(-torch.expm1(-ib))

    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVPSDE(VPSDE):
    """sub-VP: drift as VP, g = √(β(t)(1 − e^{−2∫β})); marginal std σ_t = 1 − e^{−∫β} (no square root)."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _as_time(t, x)
        beta = self.beta(t)
        return -0.5 * _bcast(beta, x) * x, torch.sqrt(beta * -torch.expm1(-2 * self.integrated_beta(t)))

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ib = self.integrated_beta(_as_time(t, x0))
        return _bcast(torch.exp(-0.5 * ib), x0) * x0, -torch.expm1(-ib)


SDES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def get_sde(name: str, **kwargs: float) -> SDE:
    """Build the SDE called ``name`` (``ve``, ``vp``, ``subvp``, ...) with its keyword parameters."""
    try:
        cls = SDES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown SDE {name!r}; valid: {', '.join(SDES)}") from None
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad parameters for SDE {name!r}: {e}") from None
