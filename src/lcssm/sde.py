"""Forward SDEs ``dx = f(x, t)dt + g(t)dw`` on t ∈ [0, T] (Song et al. 2021, "Score-based generative modeling
through stochastic differential equations", Sec. 3.4 and App. B).

The affine SDEs (VE, VP, subVP) have Gaussian marginals ``p_t(x_t | x0) = N(α_t x0, σ_t² I)`` available in
closed form through :meth:`SDE.marginal`. Every SDE can also be simulated forward (:meth:`SDE.simulate`),
which is all that the ``simulated`` Stein center needs. The non-affine ones are the :class:`ScaledDriftSDE` family
``dx = β(t)·φ(x)dt + √β(t)dw``: :class:`TanhSDE` (a sech⁴ prior) and :class:`StudentTSDE` (a heavy-tailed
Student-t prior). They have no closed-form α_t, σ_t, but a measured :class:`~lcssm.noise_table.NoiseTable` can be
attached (:meth:`SDE.with_table`, :attr:`SDE.has_levels`), and :meth:`SDE.local_gaussian` gives a Gaussian
approximation of the transition from s to t (exact for the affine SDEs).

The samplers and the likelihood use three more pieces of the interface: :meth:`SDE.discretize` (one forward
step, for the reverse-diffusion predictor), :meth:`SDE.reverse` (the reverse-time SDE or probability-flow ODE
of Song et al. 2021, Eq. 6 and Eq. 13) and the prior (:meth:`SDE.prior_sample`, :meth:`SDE.prior_logp`).
"""

from __future__ import annotations

import abc
import copy
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.noise_table import NoiseTable
from lcssm.tensors import bcast

__all__ = [
    "SDE",
    "SDES",
    "ReverseSDE",
    "ScaledDriftSDE",
    "StudentTSDE",
    "TimeScoreFn",
    "SubVPSDE",
    "TanhSDE",
    "VESDE",
    "VPSDE",
    "gaussian_data_marginal",
    "gaussian_data_score",
    "get_sde",
]

#: a time-conditional score ``score_fn(x, t)``: x of shape (B, *D), t of shape (B,) -> shape of x
TimeScoreFn = Callable[[Tensor, Tensor], Tensor]

_S = TypeVar("_S", bound="SDE")


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
    #: the measured α_t, σ_t of an SDE without a closed form (:meth:`with_table`); the closed form wins where there
    #: is one
    table: NoiseTable | None = None

    def with_table(self: _S, table: NoiseTable | None) -> _S:
        """A shallow copy of this SDE with the noise ``table`` attached (None detaches it); ``self`` is untouched."""
        if table is not None and not isinstance(table, NoiseTable):
            raise ConfigError(f"with_table needs a NoiseTable or None, got {type(table).__name__}")
        new = copy.copy(self)
        new.table = table
        return new

    @property
    def has_levels(self) -> bool:
        """Whether α_t and σ_t (hence the noise level σ_t/α_t) are available: in closed form or tabulated."""
        return self.has_marginal or self.table is not None

    def _require_table(self) -> NoiseTable:
        if self.table is None:
            raise ConfigError(f"{self!r} has no closed-form alpha_t/sigma_t and no noise table "
                              "(attach one: sde.with_table(lcssm.noise_levels.tabulate(sde, x0)))")
        return self.table

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

    def stationary_score(self, x: Tensor) -> Tensor:
        """``∇log p_∞(x)``, the score of the SDE's stationary law, where it has one (VP, subVP, the scaled-drift
        family); ConfigError otherwise (VE has none)."""
        raise ConfigError(f"{self!r} has no stationary law")

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)`` alone, shape (B,)."""
        return self.sde(torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device), t)[1]

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(α_t, σ_t)``, each of shape (B,), of the closed-form marginal N(α_t x0, σ_t² I); for an SDE without a
        closed form (``has_marginal = False``) its noise table's (:meth:`with_table`), ConfigError without one."""
        if not self.has_marginal:
            return self._require_table().coefficients(t)
        mean, std = self.marginal(torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device), t)
        return mean[:, 0], std

    def local_gaussian(self, x_s: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean and std (both of x_s's shape) of a Gaussian for ``x_t`` given ``x_s``, per-sample times s ≤ t.

        For an affine SDE (``has_marginal``) it is the exact transition kernel: mean ``a·x_s`` with
        ``a = α_t/α_s`` and std ``√(σ_t² − a²σ_s²)`` (per sample, broadcast to x_s's shape). The non-affine
        :class:`ScaledDriftSDE` family linearises its drift at x_s instead; any other SDE raises ConfigError.
        """
        if not self.has_marginal:
            raise ConfigError(f"{self!r} has no closed-form transition kernel and no local Gaussian approximation")
        s, t = _as_time(s, x_s), _as_time(t, x_s)
        alpha_t, sigma_t = self.marginal_coefficients(t)
        alpha_s, sigma_s = self.marginal_coefficients(s)
        a = alpha_t / alpha_s
        std = (sigma_t**2 - (a * sigma_s) ** 2).clamp_min(0.0).sqrt()
        return bcast(a, x_s) * x_s, bcast(std, x_s).expand_as(x_s).contiguous()

    def discretize(self, x: Tensor, t: Tensor | float, dt: Tensor | float) -> tuple[Tensor, Tensor]:
        """One forward step of size ``dt`` ending at ``t``: ``x_t ≈ x + f_Δ + G_Δ·z`` with z ~ N(0, I).

        Returns ``(f_Δ, G_Δ)`` (shape of x, shape (B,)). This generic Euler–Maruyama version gives
        ``(f(x, t)·dt, g(t)·√dt)``; SDEs with a closed-form marginal override it with the exact Gaussian
        transition kernel (:meth:`_kernel_discretize`). Used by the reverse-diffusion predictor (Song et al.
        2021, Eq. 46–47).
        """
        t = _as_time(t, x)
        dt = _as_time(dt, x)
        drift, g = self.sde(x, t)
        return drift * bcast(dt, x), g * dt.sqrt()

    def _kernel_discretize(self, x: Tensor, t: Tensor | float, dt: Tensor | float) -> tuple[Tensor, Tensor]:
        """Exact transition from ``t − dt`` to ``t`` of an affine SDE: ``x_t = a·x_{t−dt} + √(σ_t² − a²σ_{t−dt}²)·z``
        with ``a = α_t / α_{t−dt}``, returned as ``((a − 1)·x, √(σ_t² − a²σ_{t−dt}²))``.

        For VE this is score_sde's ``G = √(σ_i² − σ_{i−1}²)``; for VP it is DDPM's ancestral step with
        ``1 − β_i = a²`` (score_sde uses the first-order ``√(1 − β_i)``).
        """
        t = _as_time(t, x)
        s = (t - _as_time(dt, x)).clamp_min(0.0)
        alpha_t, sigma_t = self.marginal_coefficients(t)
        alpha_s, sigma_s = self.marginal_coefficients(s)
        a = alpha_t / alpha_s
        var = (sigma_t**2 - (a * sigma_s) ** 2).clamp_min(0.0)
        return bcast(a - 1.0, x) * x, var.sqrt()

    def reverse(self, score_fn: TimeScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE ``dx = [f − g²∇log p_t]dt + g dw̄`` (Song et al. 2021, Eq. 6) or, with
        ``probability_flow``, the probability-flow ODE ``dx = [f − ½g²∇log p_t]dt`` (Eq. 13), with
        ``∇log p_t`` replaced by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

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
            x = x + drift * bcast(dt, x) + bcast(g * dt.sqrt(), x) * noise
        return x


class ReverseSDE:
    """Reverse-time SDE or probability-flow ODE of a forward SDE with the score replaced by ``score_fn(x, t)``.

    ``sde(x, t)`` returns the drift and diffusion of ``dx = [f − c·g²s]dt + g' dw̄`` run backwards in time, with
    ``c = 1, g' = g`` for the SDE (Song et al. 2021, Eq. 6) and ``c = ½, g' = 0`` for the ODE (Eq. 13).
    ``discretize(x, t, dt)`` is the same for one step from ``t`` back to ``t − dt`` (Eq. 46–47): the next
    mean is ``x − f_Δ + c·G_Δ²·s``, i.e. it returns ``(f_Δ − c·G_Δ²·s, G'_Δ)`` to be *subtracted* / added.
    """

    def __init__(self, forward: SDE, score_fn: TimeScoreFn, probability_flow: bool = False) -> None:
        self.forward_sde, self.score_fn, self.probability_flow = forward, score_fn, bool(probability_flow)
        self.T = forward.T

    @property
    def _coef(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def _score(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        if score.shape != x.shape:
            raise ValueError(f"score_fn must return the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
        return score

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Drift ``f − c·g²·s`` (shape of x) and diffusion (shape (B,), zeros for the ODE)."""
        t = _as_time(t, x)
        drift, g = self.forward_sde.sde(x, t)
        drift = drift - self._coef * bcast(g**2, x) * self._score(x, t)
        return drift, torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: Tensor, t: Tensor | float, dt: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(f_Δ − c·G_Δ²·s, G'_Δ)`` for the step from ``t`` to ``t − dt``: ``x ← x − f + G'·z``."""
        t = _as_time(t, x)
        f, G = self.forward_sde.discretize(x, t, dt)
        f = f - self._coef * bcast(G**2, x) * self._score(x, t)
        return f, torch.zeros_like(G) if self.probability_flow else G

    def __repr__(self) -> str:
        kind = "probability-flow ODE" if self.probability_flow else "reverse SDE"
        return f"ReverseSDE({self.forward_sde!r}, {kind})"


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

    def time_at_level(self, level: Tensor) -> Tensor:
        """The time at which the noise level σ_t/α_t = σ(t) equals ``level`` (unclamped): the inverse of σ(t)."""
        return self.T * torch.log(level / self.sigma_min) / self._log_ratio

    discretize = SDE._kernel_discretize

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
        return -0.5 * bcast(beta, x) * x, beta.sqrt()

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ib = self.integrated_beta(_as_time(t, x0))
        alpha = torch.exp(-0.5 * ib)
        return bcast(alpha, x0) * x0, torch.sqrt(-torch.expm1(-ib))

    def prior_std(self) -> float:
        return 1.0

    def stationary_score(self, x: Tensor) -> Tensor:
        """``−x``, the score of the stationary N(0, I) (also subVP's)."""
        return -x

    def integrated_beta_at_level(self, level: Tensor) -> Tensor:
        """∫₀ᵗβ at the time where σ_t/α_t = ``level``: σ_t/α_t = √(e^{∫β} − 1), so ∫β = ln(1 + level²)."""
        return torch.log1p(level**2)

    def time_at_level(self, level: Tensor) -> Tensor:
        """The time at which σ_t/α_t equals ``level`` (unclamped): the positive root of
        ½(β_max − β_min)t²/T + β_min·t = ∫β, written as 2∫β/(β_min + √(β_min² + 2(β_max − β_min)∫β/T))."""
        ib = self.integrated_beta_at_level(level)
        slope = (self.beta_max - self.beta_min) / self.T
        return 2 * ib / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * ib))

    discretize = SDE._kernel_discretize

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVPSDE(VPSDE):
    """sub-VP: drift as VP, g = √(β(t)(1 − e^{−2∫β})); marginal std σ_t = 1 − e^{−∫β} (no square root)."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _as_time(t, x)
        beta = self.beta(t)
        return -0.5 * bcast(beta, x) * x, torch.sqrt(beta * -torch.expm1(-2 * self.integrated_beta(t)))

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ib = self.integrated_beta(_as_time(t, x0))
        return bcast(torch.exp(-0.5 * ib), x0) * x0, -torch.expm1(-ib)

    def integrated_beta_at_level(self, level: Tensor) -> Tensor:
        """σ_t/α_t = (1 − e^{−∫β})/e^{−∫β/2} = 2 sinh(∫β/2), so ∫β = 2 asinh(level/2)."""
        return 2 * torch.asinh(level / 2)


def _log_cosh(x: Tensor) -> Tensor:
    """log cosh(x) without overflow."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def _expm1_over(z: Tensor) -> Tensor:
    """``(e^z − 1)/z``, 1 at z = 0: expm1 over a denominator kept away from 0, a Taylor series for |z| < 1e-4
    (relative error below z³/24 there), so neither branch of the ``where`` is NaN or infinite."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(safe) / safe)


class ScaledDriftSDE(SDE):
    """Non-affine SDEs ``dx = β(t)·φ(x)dt + √β(t)dw``: a componentwise φ, VP's β(t) = β_min + t/T·(β_max − β_min).

    Subclasses give ``phi(x)`` and its derivative ``phi_slope(x)`` (elementwise). β(t) only reparametrises time
    (τ = ∫₀ᵗβ turns the SDE into ``dx = φ(x)dτ + dW_τ``), so the stationary law ``p ∝ exp(∫2f/g²) = exp(2∫φ)`` of a
    constant β stays stationary, and is the prior. There is no closed-form marginal (``has_marginal = False``):
    train with ``center="local"`` (with a noise table) or ``"simulated"``.

    **Local Gaussian** (:meth:`local_gaussian`). Given x_s, freeze the drift's slope at x_s:
    ``φ(x) ≈ a + b(x − x_s)`` with ``a = φ(x_s)``, ``b = φ'(x_s)`` per coordinate. In τ-time, with
    ``y = x − x_s`` and ``B = ∫_s^t β`` (closed form), ``dy = (a + b·y)dτ + dW_τ`` from y = 0 is an
    Ornstein–Uhlenbeck process with ``E[y_B] = a·(e^{bB} − 1)/b`` and ``Var[y_B] = ∫₀ᴮ e^{2b(B−τ)}dτ =
    (e^{2bB} − 1)/(2b)``, both continuous at b = 0 (``a·B`` and ``B``). So x_t | x_s ≈ N(x_s + a·(e^{bB} − 1)/b,
    (e^{2bB} − 1)/(2b)) per coordinate, exact when φ is linear (φ(x) = −x/2 gives VP's kernel ``e^{−B/2}x_s``,
    ``1 − e^{−B}``). Otherwise the slope's change along the path is what it misses: the mean errs by about
    ``φ''(x_s)·B²/4`` and the variance by O(B³), so keep t − s small where β is large. The closest published
    method is the local DSM of Singhal, Goldstein and Ranganath (ICML 2024, "What's the score? Automated
    denoising score matching for nonlinear diffusions"), which uses the one-step Euler–Maruyama Gaussian
    N(x_s + a·B, B); this is its exponential-integrator form (the two agree to first order in B).
    """

    has_marginal = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ConfigError(f"{type(self).__name__} needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    @abc.abstractmethod
    def phi(self, x: Tensor) -> Tensor:
        """The drift's shape φ(x), elementwise (the drift is β(t)·φ(x))."""

    @abc.abstractmethod
    def phi_slope(self, x: Tensor) -> Tensor:
        """φ'(x), elementwise."""

    def stationary_score(self, x: Tensor) -> Tensor:
        """``∇log p_∞ = 2φ(x)``, the score of the stationary law ``p_∞ ∝ exp(∫2f/g²) = exp(2∫φ)`` (per coordinate),
        which the time change β(t) leaves unchanged."""
        return 2 * self.phi(x)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t / self.T * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """∫₀ᵗ β(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(_as_time(t, x))
        return bcast(beta, x) * self.phi(x), beta.sqrt()

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise ConfigError(f"{self!r} has no closed-form marginal; use center='simulated' or simulate()")

    def time_at_level(self, level: Tensor) -> Tensor:
        """The time at which the tabulated noise level σ_t/α_t equals ``level`` (the noise table's inverse, clamped
        to its times); ConfigError without a table."""
        return self._require_table().time_at_level(level)

    def local_gaussian(self, x_s: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean and std (both of x_s's shape) of the Gaussian for x_t given x_s (per-sample times s ≤ t) with the
        drift linearised at x_s (class docstring): ``x_s + a·B·h(bB)`` and ``√(B·h(2bB))``, h(z) = (e^z − 1)/z."""
        s, t = _as_time(s, x_s), _as_time(t, x_s)
        big_b = bcast(self.integrated_beta(t) - self.integrated_beta(s), x_s)
        a, b = self.phi(x_s), self.phi_slope(x_s)
        mean = x_s + a * big_b * _expm1_over(b * big_b)
        return mean, (big_b * _expm1_over(2 * b * big_b)).sqrt()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"


class TanhSDE(ScaledDriftSDE):
    """A non-affine SDE: ``dx = −β(t)·tanh(x/2)dt + √β(t)dw`` (componentwise), β(t) linear as in VP.

    Near 0 the drift is VP's ``−½β(t)x``; for ``|x| ≫ 2`` it saturates at ``∓β(t)``, so the transition kernel is
    not Gaussian and has no closed form (``has_marginal = False``: train it with ``center="local"`` or
    ``"simulated"``).

    **Prior.** For constant β the Fokker–Planck equation has the stationary density
    ``p(x) ∝ exp(∫2f/g²) = cosh(x/2)⁻⁴``, normalised ``p(x) = (3/8)·sech⁴(x/2)`` per coordinate (variance
    ``2(π²/6 − 1) ≈ 1.29``; ``x = logit(u)`` with u ~ Beta(2, 2)). A time-dependent β(t) only reparametrises
    time, so this law stays stationary and the forward process converges to it from any start, as VP converges
    to N(0, I). The prior is this exact stationary law (sampled as the logit of the median of three uniforms),
    and p_T differs from it only by unfinished mixing: near 0 at VP's rate (``e^{−½∫β} ≈ 0.007`` for the
    defaults), while far out the bounded drift moves points inwards by at most ``∫β ≈ 10`` units by T = 1.
    Measured with the defaults: from x0 = 2, 4, 6 the mean of x_T is 0.05, 0.12, 0.33 (prior std 1.14), so
    keep data within a few units of the origin (standardised data; the toy sets in [−4, 4] are fine).
    """

    def phi(self, x: Tensor) -> Tensor:
        """φ(x) = −tanh(x/2)."""
        return -torch.tanh(0.5 * x)

    def phi_slope(self, x: Tensor) -> Tensor:
        """φ'(x) = −½·sech²(x/2) = −½(1 − tanh²(x/2))."""
        return -0.5 * (1 - torch.tanh(0.5 * x) ** 2)

    def prior_std(self) -> float:
        """Standard deviation ``√(2(π²/6 − 1))`` of the (non-Gaussian) stationary prior."""
        return math.sqrt(2 * (math.pi**2 / 6 - 1))

    def prior_sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """i.i.d. draws ``logit(u)``, u ~ Beta(2, 2) taken as the median of three uniforms."""
        u = torch.rand((3, *shape), generator=generator, device=device, dtype=torch.float64).median(0).values
        return (torch.log(u) - torch.log1p(-u)).to(torch.get_default_dtype())

    def prior_logp(self, z: Tensor) -> Tensor:
        """``Σ_i log(3/8) − 4·log cosh(z_i/2)``, per sample (B,)."""
        return (math.log(3 / 8) - 4 * _log_cosh(0.5 * z)).flatten(1).sum(1)


class StudentTSDE(ScaledDriftSDE):
    """A heavy-tailed non-affine SDE: ``dx = −β(t)·(ν+1)/2 · x/(ν + x²)dt + √β(t)dw`` (componentwise), β as in VP.

    **Why.** Its prior has power-law tails, for heavy-tailed data: an affine SDE ends at a Gaussian, so the
    reverse process has to build every extreme value from a light-tailed start, while here the prior already
    carries tails ``p(x) ~ |x|^{−(ν+1)}``. (Heavy-tailed diffusion models with Student-t noise in an affine
    process are the related approach of Pandey et al. 2024, "Heavy-tailed diffusion models".)

    **Prior.** For constant β the stationary density is ``p(x) ∝ exp(∫2f/g²) = exp(−(ν+1)/2 · ln(ν + x²))
    ∝ (1 + x²/ν)^{−(ν+1)/2}``: Student's t with ν degrees of freedom and scale 1, per coordinate, variance
    ν/(ν − 2). β(t) only changes the clock, so the law stays stationary for the time-dependent β as for
    :class:`TanhSDE`, and it is the prior. Near 0 the drift is VP-like, ``−β(t)·(ν+1)/(2ν)·x`` (rate
    (ν+1)/(2ν) against VP's ½). The prior is sampled exactly as ``z/√(χ²_ν/ν)`` with z ~ N(0, 1) and
    ``χ²_ν = −2·Σ_{k ≤ ⌊ν/2⌋} log U_k (+ z'² for odd ν)`` from uniforms and normals of the generator, which
    needs an **integer ν ≥ 3** (a finite prior variance; other ν raise ConfigError).

    **Mixing caveat.** The drift decays as ``−β(t)(ν+1)/(2x)`` far out, so points out there barely move: without
    noise, ``x²/2 + ν·ln|x|`` falls by ``(ν+1)/2·∫β`` (20 for ν = 3 and the defaults' ``∫₀¹β ≈ 10``), which
    brings x0 = 6 to about 1.9 and x0 = 8 to about 5.2 by T. Measured with the defaults and ν = 3 (40,000 paths):
    from x0 = 2, 4, 6, 8, 16 the median of x_T is 0.09, 0.47, 1.8, 5.1, 14.7 (the prior's quartiles are ±0.77),
    far slower than :class:`TanhSDE` (0.03, 0.12, 0.24, 0.60, 6.0). So keep the bulk of the data within about two
    units (standardised data) and let the prior's tails carry the outliers, or raise beta_max.
    """

    def __init__(self, nu: float = 3.0, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        ok = isinstance(nu, numbers.Real) and not isinstance(nu, bool) and math.isfinite(nu)
        if not (ok and nu >= 3 and float(nu).is_integer()):
            raise ConfigError(f"StudentTSDE needs an integer nu >= 3 (a finite prior variance and an exact sampler), "
                              f"got {nu!r}")
        super().__init__(beta_min, beta_max, T)
        self.nu = float(nu)

    def phi(self, x: Tensor) -> Tensor:
        """φ(x) = −(ν+1)/2 · x/(ν + x²)."""
        return -0.5 * (self.nu + 1) * x / (self.nu + x * x)

    def phi_slope(self, x: Tensor) -> Tensor:
        """φ'(x) = −(ν+1)/2 · (ν − x²)/(ν + x²)²: negative inside |x| < √ν, 0 at |x| = √ν, positive outside."""
        x2 = x * x
        return -0.5 * (self.nu + 1) * (self.nu - x2) / (self.nu + x2) ** 2

    def prior_std(self) -> float:
        """Standard deviation ``√(ν/(ν − 2))`` of the Student-t prior."""
        return math.sqrt(self.nu / (self.nu - 2))

    def prior_sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """i.i.d. Student-t draws ``z/√(χ²_ν/ν)`` (class docstring), drawn in float64."""
        shape = tuple(shape)

        def normal() -> Tensor:
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float64)

        z, nu = normal(), int(self.nu)
        chi2 = torch.zeros(shape, device=device, dtype=torch.float64)
        for _ in range(nu // 2):  # χ²_2 = Gamma(1, 2) = −2 log U; 1 − U ∈ (0, 1] keeps the log finite
            chi2 -= 2 * torch.log1p(-torch.rand(shape, generator=generator, device=device, dtype=torch.float64))
        if nu % 2:
            chi2 += normal() ** 2
        return (z / torch.sqrt(chi2 / nu)).to(torch.get_default_dtype())

    def prior_logp(self, z: Tensor) -> Tensor:
        """``Σ_i log Γ((ν+1)/2) − log Γ(ν/2) − ½log(νπ) − (ν+1)/2 · log(1 + z_i²/ν)``, per sample (B,)."""
        nu = self.nu
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return (const - 0.5 * (nu + 1) * torch.log1p(z * z / nu)).flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"StudentTSDE(nu={self.nu}, beta_min={self.beta_min}, beta_max={self.beta_max})"


SDES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE, "tanh": TanhSDE, "student": StudentTSDE}


def gaussian_data_marginal(sde: SDE, mean: Tensor, cov: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (B, d) and covariance (B, d, d) of p_t for data N(mean, cov) under an affine SDE:
    ``N(α_t·mean, α_t²·cov + σ_t²·I)``."""
    alpha, sigma = sde.marginal_coefficients(t)
    eye = torch.eye(mean.shape[-1], dtype=cov.dtype, device=cov.device)
    return alpha[:, None] * mean, (alpha**2)[:, None, None] * cov + (sigma**2)[:, None, None] * eye


def gaussian_data_score(sde: SDE, mean: Tensor, cov: Tensor) -> TimeScoreFn:
    """The exact score ``∇log p_t(x) = −C_t⁻¹(x − m_t)`` for data N(mean, cov) (flat data, shape (B, d)).

    An analytic reference to run samplers and the likelihood through the same code as a network.
    """
    if not sde.has_marginal:
        raise ConfigError(f"{sde!r} has no closed-form marginal, so a Gaussian's score is not available")

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        m, c = gaussian_data_marginal(sde, mean.to(x), cov.to(x), _as_time(t, x))
        return -torch.linalg.solve(c, (x - m).unsqueeze(-1)).squeeze(-1)

    return score_fn


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
