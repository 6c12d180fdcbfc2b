"""The reverse-time SDE: predictor-corrector sampling (Song et al. 2021, Alg. 1-3) and the final denoising step."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lcssm.errors import ConfigError
from lcssm.sampling.checks import check_count, check_positive, check_t_min, norms, randn_like
from lcssm.sde import SDE, TimeScoreFn
from lcssm.tensors import bcast

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "none")


@torch.no_grad()
def denoise_step(score_fn: TimeScoreFn, sde: SDE, x: Tensor, t: float) -> Tensor:
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
    score_fn: TimeScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    n_steps: int,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    denoise: bool = True,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Predictor–corrector sampling of the reverse-time SDE (Song et al. 2021, Alg. 1–3).

    Starts from ``x`` at T (a prior draw, e.g. ``sde.prior_sample``; not modified) and takes ``n_steps`` equal
    steps down to ``t_min``. At each time t: ``n_corrector_steps`` Langevin corrector steps at t (Alg. 4: ``x ← x + ε
    s + √(2ε) z`` with
    ``ε = 2(snr·mean_i‖z_i‖ / mean_i‖s_i‖)²``, norms per sample over its data dims, averaged over the batch as in
    score_sde; a purely per-sample ``2(snr‖z_i‖/‖s_i‖)²`` diverges in low dimension, where ``‖s_i‖ → 0`` near a
    mode), then one predictor step from t to t − Δt:

    * ``reverse_diffusion``: ``x ← x − f_Δ + G_Δ² s + G_Δ z`` with the SDE's :meth:`~lcssm.sde.SDE.discretize`
      (ancestral sampling for VE/VP, whose discretization is the exact Gaussian kernel);
    * ``euler_maruyama``: ``x ← x − [f − g² s]Δt + g√Δt z``;
    * ``none``: corrector only, at the ``n_steps`` times ``linspace(T, t_min, n_steps)``.

    score_sde's VP Langevin corrector multiplies ε by ``1 − β_i``; this one does not (an O(Δt) difference).
    With ``denoise`` the result at ``t_min`` is passed through :func:`denoise_step`. ``score_fn(x, t)`` gets t of
    shape (B,). Returns the samples, of ``x``'s shape, device and dtype; ``generator`` (on ``x``'s device) draws
    the noise.
    """
    if predictor not in PREDICTORS:
        raise ConfigError(f"unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ConfigError(f"unknown corrector {corrector!r}; valid: {', '.join(CORRECTORS)}")
    if predictor == "none" and corrector == "none":
        raise ConfigError("predictor and corrector cannot both be 'none'")
    check_count("n_steps", n_steps, 1)
    check_count("n_corrector_steps", n_corrector_steps, 0)
    check_positive("snr", snr)
    check_t_min(t_min, sde)
    dev = x.device
    x = x.clone()
    rsde = sde.reverse(score_fn, probability_flow=False)
    # predictor steps go from times[i] to times[i + 1]; corrector-only sampling corrects at T, ..., t_min
    times = torch.linspace(sde.T, t_min, n_steps + (predictor != "none"), dtype=torch.float64).tolist()
    batch = x.shape[0]
    for i in tqdm(range(n_steps), desc="pc sampler", disable=not progress, leave=False):
        t = torch.full((batch,), times[i], device=dev, dtype=x.dtype)
        if corrector == "langevin":
            for _ in range(n_corrector_steps):
                score = score_fn(x, t)
                z = randn_like(x, generator)
                step = 2 * (snr * norms(z).mean() / norms(score).mean().clamp_min(1e-30)) ** 2
                x = x + step * score + (2 * step).sqrt() * z
        if predictor != "none":
            dt = times[i] - times[i + 1]
        if predictor == "reverse_diffusion":
            f, G = rsde.discretize(x, t, dt)
            x = x - f + bcast(G, x) * randn_like(x, generator)
        elif predictor == "euler_maruyama":
            drift, g = rsde.sde(x, t)
            x = x - drift * dt + bcast(g * math.sqrt(dt), x) * randn_like(x, generator)
    return denoise_step(score_fn, sde, x, t_min) if denoise else x
