"""Langevin samplers: unadjusted Langevin (paper Eq. 31), MALA (Roberts & Tweedie 1996) and annealed Langevin
dynamics over a noise ladder (Song & Ermon 2019; NCSNv2, Song & Ermon 2020, Alg. 1), with the adapter that turns a
time-conditional score of an affine SDE into the noise-conditional score annealed Langevin expects."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lcssm.errors import ConfigError
from lcssm.noise_levels import time_of
from lcssm.sampling.checks import check_count, check_positive, randn_like
from lcssm.sde import SDE, TimeScoreFn
from lcssm.tensors import bcast


@torch.no_grad()
def langevin(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Unadjusted Langevin dynamics ``x ← x + (ε/2) s(x) + √ε z``, z ~ N(0, I) (paper Eq. 31).

    ``score_fn(x)`` takes the batch only (a score that is not time- or noise-conditional). Runs
    ``n_steps`` updates from ``x`` (not modified) under ``torch.no_grad()``; the noise is drawn from
    ``generator`` on ``x``'s device.
    """
    check_positive("step_size", step_size)
    check_count("n_steps", n_steps, 0)
    x = x.clone()
    half, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    for _ in tqdm(range(n_steps), desc="langevin", disable=not progress, leave=False):
        z = randn_like(x, generator)
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
    x: Tensor,
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
    check_positive("step_size", step_size)
    check_count("n_steps", n_steps, 0)
    x = x.detach().clone()
    half, noise_scale = 0.5 * step_size, math.sqrt(step_size)
    f_x, s_x = _value_and_score(log_density, x)
    accepted = 0.0
    for _ in tqdm(range(n_steps), desc="mala", disable=not progress, leave=False):
        z = randn_like(x, generator)
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
    check_count("n", n, 1)
    if not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)


@torch.no_grad()
def annealed_langevin(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
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
    check_positive("step_size", step_size)
    check_count("n_steps_each", n_steps_each, 1)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sig.numel() == 0 or not bool(torch.all(sig > 0)) or not bool(torch.all(sig[1:] <= sig[:-1])):
        raise ConfigError(f"sigmas must be positive and non-increasing, got {sig.tolist()}")
    x = x.clone()
    sigma_last = sig[-1].item()
    total = sig.numel() * n_steps_each
    with tqdm(total=total, desc="annealed langevin", disable=not progress, leave=False) as bar:
        for sigma in sig.tolist():
            alpha = step_size * (sigma / sigma_last) ** 2
            level = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            for _ in range(n_steps_each):
                x = x + alpha * score_fn(x, level) + math.sqrt(2 * alpha) * randn_like(x, generator)
                bar.update()
    if denoise:
        level = torch.full((x.shape[0],), sigma_last, device=x.device, dtype=x.dtype)
        x = x + sigma_last**2 * score_fn(x, level)
    return x


def noise_conditional_score(score_fn: TimeScoreFn, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
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
