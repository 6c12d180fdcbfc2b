"""Noise levels of an affine SDE: ``ς_t = σ_t/α_t`` and its inverse, the time at which ς_t takes a given value.

x_t = α_t(x_0 + ς_t z), so p_t is the data smoothed by N(0, ς_t²I), rescaled by α_t: ς is the noise level that
the σ-parametrised samplers (:mod:`lcssm.sampling.schedules`) walk and that the training-time distributions of
:func:`lcssm.diffusion.sample_times` are stated in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcssm.sde import SDE

__all__ = ["level_of", "noise_level", "time_of", "time_of_by_root"]


def noise_level(sde: SDE, t: Tensor) -> Tensor:
    """``ς_t = σ_t / α_t``: x_t = α_t(x_0 + ς_t z), so p_t is the data smoothed by N(0, ς_t²I), rescaled by α_t.

    Increasing in t for VE (σ_t), VP (√(e^{∫β} − 1)) and subVP (2 sinh(½∫β)). Needs a closed-form marginal.
    """
    alpha, sigma = sde.marginal_coefficients(t)
    return sigma / alpha


def level_of(sde: SDE, t: Tensor) -> Tensor:
    """``ς_t = σ_t/α_t`` (:func:`noise_level`) at the times ``t``, in float64."""
    return noise_level(sde, t.to(torch.float64))


def time_of(sde: SDE, levels: Tensor) -> Tensor:
    """The times at which ``ς_t`` equals ``levels`` (float64, any shape) on [T·1e-12, T] (ς_t is increasing in t
    for every affine SDE); levels outside go to the end times. The root of ``log ς_t − log level`` is bracketed
    and found by the Illinois variant of regula falsi (superlinear; ``log ς_t`` is linear in t for VE, so one
    step), at most 100 iterations, until t moves by less than float64 resolution. The work is on a handful of host
    scalars, never on the batch. An SDE with a closed-form inverse (``sde.time_at_level``: VE, VP, subVP) uses it
    instead, clamped to the same interval (the two agree to float64 rounding; tested)."""
    closed_form = getattr(sde, "time_at_level", None)
    if closed_form is None:
        return time_of_by_root(sde, levels)
    lo, hi = level_of(sde, torch.tensor([sde.T * 1e-12, sde.T])).tolist()
    return closed_form(levels.to(torch.float64).clamp(lo, hi)).clamp(sde.T * 1e-12, sde.T)


def time_of_by_root(sde: SDE, levels: Tensor) -> Tensor:
    """:func:`time_of` by root finding alone (any affine SDE)."""
    target = levels.to(torch.float64).flatten().log()
    lo, hi = torch.full_like(target, sde.T * 1e-12), torch.full_like(target, sde.T)
    f_lo, f_hi = level_of(sde, lo).log() - target, level_of(sde, hi).log() - target
    side = torch.zeros_like(target)  # +1 / -1: the end that moved last (Illinois halves the other's value)
    t = torch.where(f_lo >= 0, lo, hi)
    todo = (f_lo < 0) & (f_hi > 0)
    for _ in range(100):
        if not bool(todo.any()):
            break
        t_old, t = t, torch.where(todo, (lo * f_hi - hi * f_lo) / (f_hi - f_lo), t)
        f = level_of(sde, t).log() - target
        low = todo & (f < 0)
        high = todo & (f >= 0)
        f_hi = torch.where(low & (side < 0), f_hi / 2, f_hi)
        f_lo = torch.where(high & (side > 0), f_lo / 2, f_lo)
        lo, f_lo = torch.where(low, t, lo), torch.where(low, f, f_lo)
        hi, f_hi = torch.where(high, t, hi), torch.where(high, f, f_hi)
        side = torch.where(low, -1.0, torch.where(high, 1.0, side))
        todo = todo & (f.abs() > 1e-15) & (hi - lo > 4e-16 * hi) & ((t - t_old).abs() > 4e-16 * t)
    return t.view(levels.shape)
