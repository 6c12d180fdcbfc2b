"""Samplers driven by a score function (never a model object).

* :func:`langevin` — unadjusted Langevin dynamics with a score ``score_fn(x)`` (paper Eq. 31).
* :func:`annealed_langevin` — annealed Langevin dynamics over a noise ladder with a noise-conditional score
  ``score_fn(x, sigma)`` (Song & Ermon 2019; NCSNv2, Song & Ermon 2020, Alg. 1).
* :func:`pc_sample` — predictor–corrector sampler of the reverse-time SDE with a time-conditional score
  ``score_fn(x, t)`` (Song et al. 2021, Alg. 1–3).
* :func:`ode_sample` — probability-flow ODE (Song et al. 2021, Eq. 13) with an adaptive Runge–Kutta solver.
* :func:`sample` — the fixed-grid solvers of :mod:`lcssm.solvers` (Euler, Heun, DPM-Solver++(2M), DPM-Solver-3,
  EDM's churn sampler, ancestral Euler) over a noise schedule of :mod:`lcssm.schedules`, for affine SDEs.

``t`` and ``sigma`` are passed to the score function as tensors of shape (B,). Every sampler draws its noise
from ``generator`` (on the device of the samples) and runs under ``torch.no_grad()``. Mixed precision, eval
mode and EMA weights are the caller's business: wrap the model in the score function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lcssm.errors import ConfigError
from lcssm.noise_levels import noise_level, time_of
from lcssm.odeint import rk45
from lcssm.sde import SDE, ScoreFn
from lcssm.tensors import bcast

__all__ = [
    "CORRECTORS",
    "ODE_METHODS",
    "PREDICTORS",
    "annealed_langevin",
    "denoise_step",
    "geometric_sigmas",
    "langevin",
    "noise_conditional_score",
    "mala",
    "noise_level",
    "ode_sample",
    "pc_sample",
    "sample",
    "solve_ode",
]

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "none")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _norms(v: Tensor) -> Tensor:
    """Per-sample Euclidean norms over all data dims, shape (B,)."""
    return v.flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------------ Langevin
@torch.no_grad()
def langevin(
    score_fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Unadjusted Langevin dynamics ``x ← x + (ε/2) s(x) + √ε z``, z ~ N(0, I) (paper Eq. 31).

    ``score_fn(x)`` takes the batch only (a score that is not time- or noise-conditional). Runs
    ``n_steps`` updates from ``x0`` (not modified) under ``torch.no_grad()``; the noise is drawn from
    ``generator`` on ``x0``'s device.
    """
    _check_positive("step_size", step_size)
    _check_count("n_steps", n_steps, 0)
    x = x0.clone()
    half, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    for _ in tqdm(range(n_steps), desc="langevin", disable=not progress, leave=False):
        z = _randn_like(x, generator)
        x = x + half * score_fn(x) + noise_scale * z
    return x


def _value_and_score(log_density: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """f(x) and ∇ₓf(x) from one forward and one backward pass, detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = log_density(x)
        (score,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), score


@torch.no_grad()
def mala(
    log_density: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, float]:
    """Metropolis-adjusted Langevin (Roberts & Tweedie 1996) of the unnormalised log-density f: the Langevin
    proposal ``x′ = x + (ε/2) ∇f(x) + √ε z`` is accepted with probability
    ``min(1, exp(f(x′) − f(x) + log q(x | x′) − log q(x′ | x)))``, ``log q(b | a) = −‖b − a − (ε/2) ∇f(a)‖²/(2ε)``,
    so the chain leaves exp f invariant at any step size (unadjusted Langevin, :func:`langevin`, is biased by
    O(ε)). f and ∇f come from one forward and one backward pass of ``log_density`` per step. Returns the samples
    and the mean acceptance rate over all steps and chains."""
    _check_positive("step_size", step_size)
    _check_count("n_steps", n_steps, 0)
    x = x0.detach().clone()
    half, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    f_x, s_x = _value_and_score(log_density, x)
    accepted = 0.0
    for _ in tqdm(range(n_steps), desc="mala", disable=not progress, leave=False):
        z = _randn_like(x, generator)
        y = x + half * s_x + noise_scale * z
        f_y, s_y = _value_and_score(log_density, y)
        forward = -0.5 * (z**2).flatten(1).sum(1)  # log q(y | x) up to the shared constant: z = (y − x − εs/2)/√ε
        backward = -((x - y - half * s_y) ** 2).flatten(1).sum(1) / (2 * step_size)
        log_ratio = f_y - f_x + backward - forward
        u = torch.rand(log_ratio.shape, generator=generator, device=x.device, dtype=log_ratio.dtype)
        accept = u.log() < log_ratio
        keep = bcast(accept, x)
        x, s_x, f_x = torch.where(keep, y, x), torch.where(keep, s_y, s_x), torch.where(accept, f_y, f_x)
        accepted += float(accept.float().mean())
    return x, accepted / max(n_steps, 1)


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` in geometric progression (float64)."""
    _check_count("n", n, 1)
    if not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)


@torch.no_grad()
def annealed_langevin(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigmas: Sequence[float] | Tensor,
    *,
    step_size: float,
    n_steps_each: int,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Annealed Langevin dynamics (NCSNv2, Song & Ermon 2020, Alg. 1) with a **noise-conditional** score.

    ``score_fn(x, sigma)`` estimates ``∇log p_σ(x)`` of the data smoothed by N(0, σ²I); ``sigma`` is a (B,)
    tensor holding one level of ``sigmas`` (a decreasing list σ_1 > … > σ_L, see :func:`geometric_sigmas`).
    At level i, ``n_steps_each`` updates ``x ← x + α_i s(x, σ_i) + √(2α_i) z`` with ``α_i = ε(σ_i/σ_L)²``,
    ε = ``step_size`` (NCSNv2's ``step_lr``; in :func:`langevin`'s Eq. 31 notation the step is 2α_i). With
    ``denoise``, a final ``x ← x + σ_L² s(x, σ_L)`` (Tweedie's formula; NCSNv2's ``denoise``) removes the
    last level's noise.
    """
    _check_positive("step_size", step_size)
    _check_count("n_steps_each", n_steps_each, 1)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sig.numel() == 0 or not bool(torch.all(sig > 0)) or not bool(torch.all(sig[1:] <= sig[:-1])):
        raise ConfigError(f"sigmas must be positive and non-increasing, got {sig.tolist()}")
    x = x0.clone()
    sigma_last = sig[-1].item()
    total = sig.numel() * n_steps_each
    with tqdm(total=total, desc="annealed langevin", disable=not progress, leave=False) as bar:
        for sigma in sig.tolist():
            alpha = step_size * (sigma / sigma_last) ** 2
            level = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            for _ in range(n_steps_each):
                x = x + alpha * score_fn(x, level) + math.sqrt(2 * alpha) * _randn_like(x, generator)
                bar.update()
    if denoise:
        level = torch.full((x.shape[0],), sigma_last, device=x.device, dtype=x.dtype)
        x = x + sigma_last**2 * score_fn(x, level)
    return x


def noise_conditional_score(score_fn: ScoreFn, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """Turn a time-conditional score of an affine SDE into the noise-conditional score that
    :func:`annealed_langevin` expects: ``∇log q_ς(y) = α_t·s(α_t y, t)`` with t the time at which
    :func:`noise_level` equals ς (:func:`lcssm.noise_levels.time_of`, in float64, cached per level) and q_ς the data
    smoothed by N(0, ς²I). Levels outside ``[ς_0, ς_T]`` are clamped to the end times."""
    if not sde.has_marginal:
        raise ConfigError(f"{sde!r} has no closed-form marginal, so its noise levels are not known")
    cache: dict[float, float] = {}

    def time_of_level(level: float) -> float:
        if level not in cache:
            cache[level] = float(time_of(sde, torch.tensor([level], dtype=torch.float64)))
        return cache[level]

    def score(y: Tensor, sigma: Tensor) -> Tensor:
        levels = sigma.detach().double().cpu()
        times = [time_of_level(v) for v in levels.unique().tolist()]
        t = torch.tensor(times, dtype=torch.float64)[torch.searchsorted(levels.unique(), levels)]
        t = t.to(device=y.device, dtype=y.dtype)
        alpha, _ = sde.marginal_coefficients(t)
        a = bcast(alpha, y)
        return a * score_fn(a * y, t)

    return score


# ----------------------------------------------------------------------------------- reverse-time SDE / ODE
def _resolve(
    shape: Sequence[int],
    device: torch.device | str | None,
    generator: torch.Generator | None,
    x_init: Tensor | None,
) -> torch.device:
    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
        return x_init.device
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _check_t_min(t_min: float, sde: SDE) -> None:
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")


def _start(
    sde: SDE,
    shape: Sequence[int],
    device: torch.device,
    generator: torch.Generator | None,
    x_init: Tensor | None,
    dtype: torch.dtype | None,
) -> Tensor:
    if x_init is not None:
        return x_init.clone() if dtype is None else x_init.to(dtype)
    return sde.prior_sample(shape, generator=generator, device=device).to(dtype or torch.float32)


@torch.no_grad()
def denoise_step(score_fn: ScoreFn, sde: SDE, x: Tensor, t: float) -> Tensor:
    """Remove the noise left at time ``t``: Tweedie's ``E[x_0 | x_t] = (x + σ_t²·s(x, t)) / α_t`` when the SDE has
    a closed-form marginal, else one noise-free reverse Euler step from ``t`` to 0:
    ``x − f(x, t)·t + g(t)²·t·s(x, t)``."""
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    score = score_fn(x, tt)
    if sde.has_marginal:
        alpha, sigma = sde.marginal_coefficients(tt)
        return (x + bcast(sigma**2, x) * score) / bcast(alpha, x)
    drift, g = sde.sde(x, tt)
    return x - drift * t + bcast(g**2 * t, x) * score


@torch.no_grad()
def pc_sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    *,
    n_steps: int,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    denoise: bool = True,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x_init: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """Predictor–corrector sampling of the reverse-time SDE (Song et al. 2021, Alg. 1–3).

    Starts from the prior at T (or ``x_init``) and takes ``n_steps`` equal steps down to ``t_min``. At each time
    t: ``n_corrector_steps`` Langevin corrector steps at t (Alg. 4: ``x ← x + ε s + √(2ε) z`` with
    ``ε = 2(snr·mean_i‖z_i‖ / mean_i‖s_i‖)²``, norms per sample over its data dims, averaged over the batch as in
    score_sde; a purely per-sample ``2(snr‖z_i‖/‖s_i‖)²`` diverges in low dimension, where ``‖s_i‖ → 0`` near a
    mode), then one predictor step from t to t − Δt:

    * ``reverse_diffusion``: ``x ← x − f_Δ + G_Δ² s + G_Δ z`` with the SDE's :meth:`~lcssm.sde.SDE.discretize`
      (ancestral sampling for VE/VP, whose discretization is the exact Gaussian kernel);
    * ``euler_maruyama``: ``x ← x − [f − g² s]Δt + g√Δt z``;
    * ``none``: corrector only, at the ``n_steps`` times ``linspace(T, t_min, n_steps)``.

    score_sde's VP Langevin corrector multiplies ε by ``1 − β_i``; this one does not (an O(Δt) difference).
    With ``denoise`` the result at ``t_min`` is passed through :func:`denoise_step`. ``score_fn(x, t)`` gets t of
    shape (B,). Returns the samples, shape ``shape``.

    Common to both samplers: the samples live on ``device`` (default: the generator's device, else CPU) in
    ``dtype`` (default float32); ``x_init`` replaces the prior draw at T (its device and dtype then win).
    """
    if predictor not in PREDICTORS:
        raise ConfigError(f"unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ConfigError(f"unknown corrector {corrector!r}; valid: {', '.join(CORRECTORS)}")
    if predictor == "none" and corrector == "none":
        raise ConfigError("predictor and corrector cannot both be 'none'")
    _check_count("n_steps", n_steps, 1)
    _check_count("n_corrector_steps", n_corrector_steps, 0)
    _check_positive("snr", snr)
    _check_t_min(t_min, sde)
    dev = _resolve(shape, device, generator, x_init)
    x = _start(sde, shape, dev, generator, x_init, dtype)
    rsde = sde.reverse(score_fn, probability_flow=False)
    # predictor steps go from times[i] to times[i + 1]; corrector-only sampling corrects at T, ..., t_min
    times = torch.linspace(sde.T, t_min, n_steps + (predictor != "none"), dtype=torch.float64).tolist()
    batch = x.shape[0]
    for i in tqdm(range(n_steps), desc="pc sampler", disable=not progress, leave=False):
        t = torch.full((batch,), times[i], device=dev, dtype=x.dtype)
        if corrector == "langevin":
            for _ in range(n_corrector_steps):
                score = score_fn(x, t)
                z = _randn_like(x, generator)
                step = 2 * (snr * _norms(z).mean() / _norms(score).mean().clamp_min(1e-30)) ** 2
                x = x + step * score + (2 * step).sqrt() * z
        if predictor != "none":
            dt = times[i] - times[i + 1]
        if predictor == "reverse_diffusion":
            f, G = rsde.discretize(x, t, dt)
            x = x - f + bcast(G, x) * _randn_like(x, generator)
        elif predictor == "euler_maruyama":
            drift, g = rsde.sde(x, t)
            x = x - drift * dt + bcast(g * math.sqrt(dt), x) * _randn_like(x, generator)
    return denoise_step(score_fn, sde, x, t_min) if denoise else x


class _Progress:
    """Progress of an ODE integration in the integration variable, as a tqdm bar in [0, |t1 − t0|]."""

    def __init__(self, t0: float, t1: float, desc: str, enabled: bool) -> None:
        self.start = t0
        self.bar = tqdm(total=round(abs(t1 - t0), 6), desc=desc, disable=not enabled, leave=False,
                        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} [{elapsed}<{remaining}]")

    def update(self, t: float) -> None:
        done = round(abs(t - self.start), 6)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)


ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def solve_ode(
    fun: Callable[[float, Tensor], Tensor],
    t0: float,
    t1: float,
    y0: Tensor,
    *,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    desc: str = "ODE",
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Integrate ``dy/dt = fun(t, y)`` (torch tensors of ``y0``'s shape) from t0 to t1; returns ``(y(t1), nfe)``.

    ``method="RK45"``: :func:`lcssm.odeint.rk45` in torch on ``y0``'s device (scipy's algorithm and step control,
    no host round trip); the other methods: ``scipy.integrate.solve_ivp`` on a flat float64 copy. Shared by
    :func:`ode_sample` and :mod:`lcssm.likelihood`; a progress bar in t when ``progress``. Raises ConfigError for a
    bad method or tolerance, RuntimeError if the solver fails (e.g. a non-finite drift).
    """
    if method not in ODE_METHODS:
        raise ConfigError(f"unknown ODE method {method!r}; valid: {', '.join(ODE_METHODS)}")
    _check_positive("rtol", rtol)
    _check_positive("atol", atol)
    bar = _Progress(t0, t1, desc, progress)

    def tracked(t: float, y: Tensor) -> Tensor:
        bar.update(t)
        return fun(t, y)

    try:
        if method == "RK45":
            return rk45(tracked, t0, t1, y0, rtol=rtol, atol=atol)
        from scipy.integrate import solve_ivp

        def flat(t: float, y: np.ndarray) -> np.ndarray:
            return tracked(t, torch.from_numpy(y).to(y0.device).view(y0.shape)).double().cpu().numpy().ravel()

        sol = solve_ivp(flat, (t0, t1), y0.double().cpu().numpy().ravel(), method=method, rtol=rtol, atol=atol)
    finally:
        bar.bar.close()
    if not sol.success:
        raise RuntimeError(f"ODE solver failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).to(y0.device).view(y0.shape), int(sol.nfev)


@torch.no_grad()
def ode_sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    denoise: bool = True,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x_init: Tensor | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Integrate the probability-flow ODE ``dx/dt = f − ½g²s`` (Song et al. 2021, Eq. 13) from T to ``t_min``.

    ``method="RK45"`` integrates with :func:`lcssm.odeint.rk45` (torch, on the samples' device, the same algorithm
    and step control as scipy's RK45); the other methods with ``scipy.integrate.solve_ivp`` (``rtol``, ``atol``;
    score_sde's defaults). Either way the whole batch is one float64 state; the score is evaluated in ``dtype``
    on ``device`` (as in :func:`pc_sample`).
    The only randomness is the prior draw (or ``x_init``). With ``denoise`` the result is passed through
    :func:`denoise_step`. Returns ``(samples, nfe)``, nfe the number of drift evaluations (the denoising step
    adds one more score call).
    """
    _check_t_min(t_min, sde)
    dev = _resolve(shape, device, generator, x_init)
    x = _start(sde, shape, dev, generator, x_init, dtype)
    dtype = x.dtype
    rsde = sde.reverse(score_fn, probability_flow=True)
    batch = x.shape[0]

    def drift(t: float, y: Tensor) -> Tensor:
        out, _ = rsde.sde(y.to(dtype), torch.full((batch,), t, device=dev, dtype=dtype))
        return out.double()

    y, nfe = solve_ode(drift, sde.T, t_min, x.double(), method=method, rtol=rtol, atol=atol,
                       desc="probability-flow ODE", progress=progress)
    x = y.to(dtype)
    if denoise:
        x = denoise_step(score_fn, sde, x, t_min)
    return x, nfe


from lcssm.solvers import sample  # noqa: E402  (the fixed-grid solvers' entry; lcssm.solvers imports no sampler)
