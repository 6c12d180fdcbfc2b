"""Time-conditional score-matching loss for score-based diffusion models (paper Sec. 3.2, Eq. 19–20).

``L(θ) = E_t[λ(t) · E_{x0} J(θ, x0, t)]`` with t ~ U(t_min, T). For the noise objectives (lcss, dsm) the Stein
/ denoising kernel is N(center, σ_t² I) where the **center** is a named choice:

- ``marginal`` (default): center α_t·x0, so x′ ~ p_t(· | x0) and the model learns ∇log p_t.
- ``data``: center x0 (Eq. 19 read literally). Identical to ``marginal`` for VE, different for VP/subVP.
- ``simulated``: x_t drawn by simulating the forward SDE from x0 (any drift), smoothed by a small
  ``sigma_s``. Needs no transition kernel; dsm is undefined there and refused.
- ``local``: the **local Gaussian center**. x_s is simulated from x0 to an earlier time s and the last step s → t is
  the Gaussian of the drift linearised at x_s (:meth:`lcssm.sde.SDE.local_gaussian`: per coordinate, in closed form;
  the exact kernel for an affine SDE), N(m, diag v). s is set against the marginal spread by ``local_width`` h, the
  largest spread over which the drift is taken as linear: while σ_t ≤ h the step starts at s = 0 (one linearised
  step from x0, which for an affine SDE is the ``marginal`` kernel itself), beyond it carries the spread h,
  ``α_t²(ς_t² − ς_s²) = h²`` in the noise level ς = σ/α. This is local denoising score matching (Singhal,
  Goldstein & Ranganath, ICML 2024) written for every noise objective: with γ = 1 and the same noise, LCSS at this
  center has the gradient of DSM on the local kernel, so LCSS's value over DSM lies in γ, antithetic pairs and in
  needing no kernel score at all.

The Jacobian objectives (exact_sm, ssm, ssm_vr, fdssm) are evaluated at a point drawn from that same kernel.
Weightings: ``sigma2`` (λ = σ_t²), ``g2`` (λ = g(t)², likelihood weighting), ``none``.

The training times need not be uniform: :func:`sample_times` also draws them so that the noise level ς_t = σ_t/α_t
is log-uniform, or log-normal as in EDM's training (Karras et al. 2022, Sec. 5: ln ς ~ N(P_mean, P_std²)), or half
of each. This moves the network's capacity to the small noise levels where thin structure is resolved; each
noise level's regression target is unchanged, so the minimiser (the true score at every t) is too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.noise_levels import level_of, time_of
from lcssm.objectives import get_objective
from lcssm.sde import SDE, TimeScoreFn
from lcssm.tensors import bcast

__all__ = ["CENTERS", "TIME_SAMPLINGS", "WEIGHTINGS", "diffusion_loss", "local_start", "sample_times",
           "time_conditional"]

Center = Literal["marginal", "data", "simulated", "local"]
Weighting = Literal["sigma2", "g2", "none", "edm"]
CENTERS = ("marginal", "data", "simulated", "local")
WEIGHTINGS = ("sigma2", "g2", "none", "edm")
TIME_SAMPLINGS = ("uniform", "log_level", "lognormal", "mixed")

def sample_times(sde: SDE, n: int, *, kind: str = "uniform", t_min: float = 1e-5, p_mean: float = -1.2,
                 p_std: float = 1.2, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` training times on [t_min, T] drawn by ``kind``:

    - ``uniform``: t ~ U(t_min, T) (score_sde);
    - ``log_level``: ln ς_t ~ U(ln ς_{t_min}, ln ς_T);
    - ``lognormal``: ln ς_t ~ N(p_mean, p_std²) (EDM's P_mean = −1.2, P_std = 1.2), clamped to [t_min, T];
    - ``mixed``: the even rows ``log_level``, the odd rows ``lognormal``.

    All but ``uniform`` need the noise level ς_t (closed form, or an SDE's noise table); the times are found by
    :func:`lcssm.noise_levels.time_of` on the host, in float64, and then moved to ``device``."""
    _check_choice(kind, TIME_SAMPLINGS, "time sampling")
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min}")
    if kind == "uniform":
        return t_min + (sde.T - t_min) * torch.rand(n, generator=generator, device=device, dtype=dtype)
    if not sde.has_levels:
        raise ConfigError(f"time sampling {kind!r} draws noise levels sigma_t/alpha_t, which {sde!r} does not have "
                          "(no closed form and no noise table); use uniform")
    if not p_std > 0:
        raise ConfigError(f"p_std must be > 0, got {p_std}")
    # the draws follow the generator's device, the root finding stays on the host
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).cpu()
    e = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64).cpu()
    lo, hi = level_of(sde, torch.tensor([t_min, sde.T])).log().tolist()
    log_uniform, log_normal = lo + (hi - lo) * u, p_mean + p_std * e
    if kind == "log_level":
        log_level = log_uniform
    elif kind == "lognormal":
        log_level = log_normal
    else:
        log_level = torch.where(torch.arange(n) % 2 == 0, log_uniform, log_normal)
    t = time_of(sde, log_level.exp()).clamp(t_min, sde.T)
    return t.to(device=device, dtype=dtype)


def time_conditional(score_model: TimeScoreFn, t: Tensor) -> Callable[[Tensor], Tensor]:
    """Fix the time of ``score_model(x, t)``; stacked blocks of the batch get ``t`` repeated (objectives'
    batching contract)."""
    batch = t.shape[0]

    def score_fn(x: Tensor) -> Tensor:
        reps, rem = divmod(x.shape[0], batch)
        if rem:
            raise ValueError(f"score_fn called on {x.shape[0]} rows, not a multiple of the batch {batch}")
        return score_model(x, t.repeat(reps))

    return score_fn


def _check_choice(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _sqrt_weight(weighting: str, sde: SDE, t: Tensor, std: Tensor, sigma_data: float) -> Tensor:
    """√λ(t) of ``weighting`` at times ``t`` (``std``: the kernel's σ_t, per sample); see :func:`diffusion_loss`."""
    if weighting == "sigma2":
        return std
    if weighting == "g2":
        return sde.diffusion(t)
    if weighting == "edm":
        if not sigma_data > 0:
            raise ConfigError(f"sigma_data must be > 0, got {sigma_data!r}")
        alpha, sigma = sde.marginal_coefficients(t)
        return sigma * torch.sqrt(sigma**2 + (alpha * sigma_data) ** 2) / (alpha * sigma_data)
    return torch.ones_like(std)


def local_start(sde: SDE, t: Tensor, width: float) -> Tensor:
    """The start s of the local Gaussian's last step for end times ``t``: the last step carries a spread of at most
    ``width`` (h, in data units), ``α_t²(ς_t² − ς_s²) = h²``, and all of the noise (s = 0) while σ_t ≤ h. Found on
    the host in float64 (module docstring)."""
    if not width > 0:
        raise ConfigError(f"local_width must be > 0, got {width!r}")
    alpha, sigma = sde.marginal_coefficients(t.detach().cpu().double())
    rest = (sigma**2 - width**2).clamp_min(0.0).sqrt() / alpha  # ς_s
    s = torch.where(rest > 0, time_of(sde, rest.clamp_min(1e-300)), torch.zeros_like(rest))
    return torch.minimum(s.to(device=t.device, dtype=t.dtype), t)


def _kernel(sde: SDE, x0: Tensor, t: Tensor, center: str, *, sigma_s: float, n_sim_steps: int, local_width: float,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """The center ``mu``, the kernel std (per sample, or per coordinate for ``local``) and the noise level's σ_t
    per sample (what ``sigma2`` weights by) of ``center``."""
    if center == "simulated":
        if not sigma_s > 0:
            raise ConfigError(f"sigma_s must be > 0, got {sigma_s}")
        with torch.no_grad():
            mu = sde.simulate(x0, t, n_steps=n_sim_steps, generator=generator)
        std = torch.full((len(x0),), float(sigma_s), device=x0.device, dtype=x0.dtype)
        return mu, std, std
    if center == "local":
        with torch.no_grad():
            s = local_start(sde, t, local_width)
            x_s = sde.simulate(x0, s, n_steps=n_sim_steps, generator=generator)
            mu, std = sde.local_gaussian(x_s, s, t)
        return mu, std, sde.marginal_coefficients(t)[1]
    mean, std = sde.marginal(x0, t)
    return (mean if center == "marginal" else x0), std, std


def diffusion_loss(
    score_model: TimeScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    objective: str = "lcss",
    center: Center = "marginal",
    weighting: Weighting = "sigma2",
    t_min: float = 1e-5,
    sigma_s: float = 0.05,
    n_sim_steps: int = 100,
    local_width: float = 1.0,
    sigma_data: float = 1.0,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> Tensor:
    """Per-sample weighted loss ``λ(t)·J(θ, x0, t)``, shape (B,).

    ``t`` defaults to U(t_min, T) draws from ``generator`` (:func:`sample_times` draws others). ``sigma_s`` is the
    smoothing std of the ``simulated`` center, ``n_sim_steps`` the Euler–Maruyama steps of the ``simulated`` and
    ``local`` centers, ``local_width`` the h of the ``local`` center (module docstring). Weightings λ(t): ``sigma2``
    σ_t² (the score_sde default: ``σ_t·s`` regresses onto −z; σ_t of the noise level, tabulated for a non-affine
    SDE), ``g2`` g(t)² (the likelihood weighting), ``none``, and ``edm``: ``σ_t²(σ_t² + α_t²σ_d²)/(α_t²σ_d²)`` with
    ``σ_d = sigma_data``, EDM's λ(ς) = (ς² + σ_d²)/(ς σ_d)² carried from the denoiser to the score, which makes the
    regression target of a network under :class:`~lcssm.models.precond.ScoreModel`'s ``edm`` preconditioning
    unit-variance at every noise level (Karras et al. 2022, Sec. 5 and Table 1). ``options``
    go to the objective by its own keyword names (e.g. ``gamma``, ``antithetic``, ``n_samples`` for lcss,
    ``fd_eps``, ``n_slices`` for fdssm; :data:`lcssm.objectives.OBJECTIVES` records them).
    """
    fn = get_objective(objective)
    _check_choice(center, CENTERS, "center")
    _check_choice(weighting, WEIGHTINGS, "weighting")
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min}")
    if center == "simulated" and fn.needs_kernel:
        raise ConfigError(
            f"{objective} needs the closed-form transition kernel of the SDE, which center='simulated' does not have; "
            "use lcss (or ssm/ssm_vr/fdssm/exact_sm) with center='simulated', or center='local'"
        )
    if center in ("marginal", "data") and not sde.has_marginal:
        raise ConfigError(f"{sde!r} has no closed-form marginal; use center='local' (or 'simulated')")
    if (weighting == "edm" or center == "local") and not sde.has_levels:
        what = "weighting='edm'" if weighting == "edm" else "center='local'"
        raise ConfigError(f"{what} needs alpha_t and sigma_t, which {sde!r} does not have (no closed form and no "
                          "noise table: lcssm.noise_levels.tabulate)")
    batch = x0.shape[0]
    if t is None:
        t = sample_times(sde, batch, t_min=t_min, generator=generator, device=x0.device, dtype=x0.dtype)
    mu, std, level_std = _kernel(sde, x0, t, center, sigma_s=sigma_s, n_sim_steps=n_sim_steps,
                                 local_width=local_width, generator=generator)
    sqrt_lam = _sqrt_weight(weighting, sde, t, level_std, sigma_data)

    score_fn = time_conditional(score_model, t)
    if fn.needs_sigma:
        return fn(score_fn, mu, sigma=std, generator=generator, sqrt_weight=sqrt_lam, **options)
    z = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    x_t = mu + (bcast(std, mu) if std.dim() == 1 else std) * z
    return fn(score_fn, x_t, generator=generator, sqrt_weight=sqrt_lam, **options)
