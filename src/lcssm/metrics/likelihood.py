"""Exact log-likelihood of a score-based model through its probability-flow ODE, and bits per dimension.

For the ODE ``dx/dt = F(x, t) = f(x, t) − ½g(t)²s(x, t)`` (Song et al. 2021, Eq. 13) the instantaneous
change-of-variables formula (Chen et al. 2018) gives

    log p_{t_min}(x_{t_min}) = log p_T(x_T) + ∫_{t_min}^T ∇·F(x_t, t) dt,

integrated jointly with x_t from ``t_min`` to ``T`` (Song et al. 2021, App. D.2). The divergence is either exact
(d vector-Jacobian products, small d only) or Hutchinson's estimate ``vᵀ(∂F/∂x)v`` with one noise draw v per
sample held fixed over the whole integration, which makes the result an unbiased estimate of log p. p_T is
replaced by the SDE's prior (for VE, N(0, σ_max²I) is not p_T exactly: p_T is the data smoothed by
N(0, σ_max²I), so the estimate carries the prior mismatch, as score_sde's does).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lcssm.errors import ConfigError, DataError
from lcssm.sampling.ode import solve_ode
from lcssm.sde import SDE, TimeScoreFn
from lcssm.tensors import probe_noise

__all__ = ["bits_per_dim", "dequantize", "log_likelihood"]

Hutchinson = Literal["rademacher", "gaussian"]
Scale = Literal["minus_one_one", "zero_one"]
SCALES = ("minus_one_one", "zero_one")


def _drift_and_divergence(
    drift_fn, x: Tensor, t: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``F(x, t)`` and its divergence (exact when ``probe`` is None, else ``vᵀ(∂F/∂x)v``), per sample."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = drift_fn(x, t)
        if probe is not None:
            (vjp,) = torch.autograd.grad((drift * probe).sum(), x)
            div = (vjp * probe).flatten(1).sum(1)
        else:
            flat = drift.flatten(1)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
                div = div + row.flatten(1)[:, i]
    return drift.detach(), div.detach()


def log_likelihood(
    score_fn: TimeScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    hutchinson: Hutchinson = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-5,
    exact_trace: bool = False,
    method: str = "RK45",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Per-sample ``log p_{t_min}(x)`` in nats, shape (B,), and the number of drift evaluations (nfe).

    Integrates the probability-flow ODE (``method="RK45"``: :func:`lcssm.sampling.rk45.rk45` in torch on x's device;
    otherwise ``scipy.integrate.solve_ivp``; ``rtol``, ``atol``) from
    ``t_min`` to T together with the divergence of its drift, then adds the prior log-density at T (see the module
    docstring). ``exact_trace`` uses the exact divergence (d backward passes per evaluation); otherwise
    Hutchinson's estimator with ``hutchinson`` noise drawn once from ``generator``. ``score_fn(x, t)`` is
    evaluated in x's dtype and device with gradients enabled (put a model in eval mode first).
    """
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")
    if x.dim() < 2:
        raise DataError(f"x must have shape (B, *D), got {tuple(x.shape)}")
    probe = None if exact_trace else probe_noise(x.shape, hutchinson, generator=generator, device=x.device,
                                                  dtype=x.dtype, name="hutchinson noise")
    rsde = sde.reverse(score_fn, probability_flow=True)
    shape, batch, n = x.shape, x.shape[0], x.numel()
    dev, dtype = x.device, x.dtype

    def drift_fn(xt: Tensor, t: Tensor) -> Tensor:
        return rsde.sde(xt, t)[0]

    def state_fn(t: float, y: Tensor) -> Tensor:
        xt = y[:n].to(dtype).view(shape)
        tt = torch.full((batch,), t, device=dev, dtype=dtype)
        drift, div = _drift_and_divergence(drift_fn, xt, tt, probe)
        return torch.cat([drift.double().flatten(), div.double()])

    y0 = torch.cat([x.detach().double().flatten(), torch.zeros(batch, dtype=torch.float64, device=dev)])
    end, nfe = solve_ode(state_fn, t_min, sde.T, y0, method=method, rtol=rtol, atol=atol, desc="log-likelihood ODE",
                         progress=progress)
    x_T = end[:n].view(shape)
    delta = end[n:]
    logp = sde.prior_logp(x_T) + delta
    return logp.to(dtype), nfe


def _offset_bits(n_bins: int, scale: Scale) -> float:
    """``log2`` of the volume change from the dequantized cube [0, 1)^d scaled to the data range, per dim."""
    return math.log2(n_bins / 2) if scale == "minus_one_one" else math.log2(n_bins)


def dequantize(
    levels: Tensor,
    *,
    n_bins: int = 256,
    scale: Scale = "minus_one_one",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantization of integer levels ``k ∈ {0, …, n_bins − 1}``: ``u = (k + U)/n_bins`` ∈ [0, 1)
    with U ~ U[0, 1) (``noise`` if given, else drawn from ``generator``), then ``2u − 1`` for ``minus_one_one``.
    Returns float32 (float64 if ``noise`` is float64)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ConfigError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    k = levels.double() if levels.is_floating_point() else levels.to(torch.float64)
    if k.numel() and (not bool(torch.all(k == k.round())) or k.min() < 0 or k.max() > n_bins - 1):
        raise DataError(
            f"bits_per_dim needs integer levels in [0, {n_bins - 1}] (n_bins={n_bins}); got values in "
            f"[{k.min().item():g}, {k.max().item():g}]{'' if bool(torch.all(k == k.round())) else ', not integral'}"
        )
    dtype = torch.float64 if noise is not None and noise.dtype == torch.float64 else torch.float32
    if noise is None:
        noise = torch.rand(k.shape, generator=generator, device=k.device, dtype=torch.float64)
    elif noise.shape != k.shape:
        raise ValueError(f"noise must have shape {tuple(k.shape)}, got {tuple(noise.shape)}")
    u = (k + noise.to(torch.float64)) / n_bins
    return (2 * u - 1 if scale == "minus_one_one" else u).to(dtype)


def bits_per_dim(
    score_fn: TimeScoreFn,
    sde: SDE,
    levels: Tensor,
    *,
    n_bins: int = 256,
    scale: Scale = "minus_one_one",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    **likelihood_kwargs,
) -> tuple[Tensor, int]:
    """Per-sample bits/dim of discrete data, shape (B,), and the ODE's nfe.

    ``levels`` holds integers in ``{0, …, n_bins − 1}`` (uint8 images: 256; the digits data: 17), any dtype.
    They are dequantized (:func:`dequantize`; the dequantization noise is the first draw from ``generator``
    unless ``noise`` is given) to y in [−1, 1) (``minus_one_one``) or [0, 1) (``zero_one``), the model's data
    range, and by Jensen's inequality over the uniform noise

        bpd = −log p(y) / (d·ln 2) + log2(n_bins / 2)   for [−1, 1)   (7 for 8-bit data)
        bpd = −log p(y) / (d·ln 2) + log2(n_bins)       for [0, 1)    (8 for 8-bit data)

    upper-bounds the discrete model's −log2 P(levels)/d in expectation, the offset being the log-volume of a
    quantization cell in the model's coordinates. ``likelihood_kwargs`` go to :func:`log_likelihood`.
    """
    y = dequantize(levels, n_bins=n_bins, scale=scale, noise=noise, generator=generator)
    logp, nfe = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_kwargs)
    d = y[0].numel()
    return -logp / (d * math.log(2)) + _offset_bits(n_bins, scale), nfe
