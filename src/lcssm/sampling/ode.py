"""The probability-flow ODE (Song et al. 2021, Eq. 13) and the one ODE integration entry point, shared with the
likelihood (:mod:`lcssm.metrics.likelihood`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lcssm.errors import ConfigError
from lcssm.sampling.checks import check_positive, check_t_min
from lcssm.sampling.reverse import denoise_step
from lcssm.sampling.rk45 import rk45
from lcssm.sde import SDE, TimeScoreFn


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

    ``method="RK45"``: :func:`lcssm.sampling.rk45.rk45` in torch on ``y0``'s device (scipy's algorithm and step control,
    no host round trip); the other methods: ``scipy.integrate.solve_ivp`` on a flat float64 copy. Shared by
    :func:`ode_sample` and :mod:`lcssm.metrics.likelihood`; a progress bar in t when ``progress``. Raises ConfigError
    for a
    bad method or tolerance, RuntimeError if the solver fails (e.g. a non-finite drift).
    """
    if method not in ODE_METHODS:
        raise ConfigError(f"unknown ODE method {method!r}; valid: {', '.join(ODE_METHODS)}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
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
    score_fn: TimeScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    denoise: bool = True,
    t_min: float = 1e-3,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Integrate the probability-flow ODE ``dx/dt = f − ½g²s`` (Song et al. 2021, Eq. 13) from T to ``t_min``.

    ``x`` is the start at T (a prior draw; not modified). ``method="RK45"`` integrates with
    :func:`lcssm.sampling.rk45.rk45` (torch, on ``x``'s device, the same algorithm and step control as scipy's
    RK45); the other methods with ``scipy.integrate.solve_ivp`` (``rtol``, ``atol``; score_sde's defaults). Either
    way the whole batch is one float64 state; the score is evaluated in ``x``'s dtype on its device. Deterministic
    given ``x``. With ``denoise`` the result is passed through :func:`~lcssm.sampling.reverse.denoise_step`. Returns
    ``(samples, nfe)``, nfe the number of drift evaluations (the denoising step
    adds one more score call).
    """
    check_t_min(t_min, sde)
    dev, dtype = x.device, x.dtype
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


@torch.no_grad()
def heun_pf_sample(
    score_fn: TimeScoreFn,
    sde: SDE,
    x: Tensor,
    times: Tensor,
    *,
    denoise: bool = True,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Heun's method (the explicit trapezoidal rule) on the probability-flow ODE ``dx/dt = f − ½g²s`` in t, from
    ``times[0]`` down the decreasing ``times`` to ``times[-1]``, for any SDE (Song et al. 2021, Eq. 13; the steps
    of Karras et al. 2022, Alg. 1, taken in t instead of in the noise level, which a non-affine SDE does not have in
    closed form). ``x`` is the start at ``times[0]`` (not modified). With ``denoise`` the result is passed through
    :func:`~lcssm.sampling.reverse.denoise_step`. Returns ``(samples, nfe)``: 2 evaluations per step (the denoising
    step adds one more)."""
    if times.dim() != 1 or len(times) < 2 or bool((times[1:] >= times[:-1]).any()):
        raise ConfigError("heun_pf_sample needs at least two decreasing times")
    rsde = sde.reverse(score_fn, probability_flow=True)
    batch, nfe = x.shape[0], 0

    def drift(y: Tensor, t: float) -> Tensor:
        return rsde.sde(y, torch.full((batch,), t, device=y.device, dtype=y.dtype))[0]

    grid = times.tolist()
    for t_cur, t_next in tqdm(list(zip(grid[:-1], grid[1:])), desc="Heun (probability-flow ODE)", disable=not progress,
                              leave=False):
        d = drift(x, t_cur)
        proposal = x + (t_next - t_cur) * d
        x = x + (t_next - t_cur) * 0.5 * (d + drift(proposal, t_next))
        nfe += 2
    if denoise:
        x = denoise_step(score_fn, sde, x, grid[-1])
    return x, nfe
