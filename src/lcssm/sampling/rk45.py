"""An adaptive Dormand–Prince RK5(4) integrator in torch: the state stays on its device, in its dtype.

The method and its step-size control are those of ``scipy.integrate.solve_ivp(method="RK45")`` (Dormand & Prince
1980, "A family of embedded Runge–Kutta formulae"; Hairer, Nørsett & Wanner, "Solving ODEs I", II.4): the fifth-order
solution is propagated, the embedded fourth-order one estimates the error, FSAL reuses the last stage, the error
norm is the RMS over the whole state of ``err/(atol + rtol·max(|y|, |y_new|))`` and the step is rescaled by
``0.9·norm^{−1/5}`` clipped to [0.2, 10] (no growth right after a rejection); the first step is Hairer's starting
step (scipy's ``select_initial_step``). The error norm is reduced on the device; only the scalar accept/reject
decision reaches the host, never the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lcssm.errors import ConfigError

__all__ = ["rk45"]

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
#: fifth- minus fourth-order weights over the six stages and the FSAL stage
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _ORDER = 0.9, 0.2, 10.0, 4


def _rms(v: Tensor) -> Tensor:
    return v.pow(2).mean().sqrt()


def _initial_step(fun, t0: float, y0: Tensor, f0: Tensor, direction: float, rtol: float, atol: float,
                  span: float) -> float:
    """Hairer, Nørsett & Wanner (II.4) starting step: one extra evaluation."""
    scale = atol + y0.abs() * rtol
    d0, d1 = float(_rms(y0 / scale)), float(_rms(f0 / scale))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = fun(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = float(_rms((f1 - f0) / scale)) / h0
    h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (_ORDER + 1))
    return min(100 * h0, h1, span)


def rk45(fun: Callable[[float, Tensor], Tensor], t0: float, t1: float, y0: Tensor, *, rtol: float = 1e-3,
         atol: float = 1e-6, max_steps: int = 100_000) -> tuple[Tensor, int]:
    """Integrate ``dy/dt = fun(t, y)`` from ``t0`` to ``t1`` (either direction) with Dormand–Prince RK5(4) (module
    docstring); ``y0`` any shape, on any device. Returns ``(y(t1), nfe)``. ConfigError for a bad tolerance,
    RuntimeError if the step size underflows, the drift is not finite or ``max_steps`` is exceeded."""
    if not rtol > 0 or not atol > 0:
        raise ConfigError(f"rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}")
    span, direction = abs(t1 - t0), math.copysign(1.0, t1 - t0)
    y, t = y0, float(t0)
    if span == 0:
        return y, 0
    f = fun(t, y)
    nfe = 1
    h = _initial_step(fun, t, y, f, direction, rtol, atol, span)
    nfe += 1
    rejected_last = False
    for _ in range(max_steps):
        if h < 10 * abs(math.nextafter(t, direction * math.inf) - t):
            raise RuntimeError(f"RK45: step size underflow at t={t:g}")
        t_new = t + direction * h
        if direction * (t_new - t1) > 0:
            t_new = t1
        step = t_new - t
        k = [f]
        for c, a in zip(_C[1:], _A[1:]):
            k.append(fun(t + c * step, y + step * sum(w * ki for w, ki in zip(a, k))))
        y_new = y + step * sum(w * ki for w, ki in zip(_B, k))
        f_new = fun(t_new, y_new)
        nfe += 6
        k.append(f_new)
        err = step * sum(w * ki for w, ki in zip(_E, k) if w)
        norm = float(_rms(err / (atol + torch.maximum(y.abs(), y_new.abs()) * rtol)))
        if not math.isfinite(norm):
            raise RuntimeError(f"RK45: non-finite error estimate at t={t_new:g}")
        if norm < 1:
            factor = _MAX_FACTOR if norm == 0 else min(_MAX_FACTOR, _SAFETY * norm ** (-1 / (_ORDER + 1)))
            h = abs(step) * (min(1.0, factor) if rejected_last else factor)
            y, t, f, rejected_last = y_new, t_new, f_new, False
            if t == t1:
                return y, nfe
        else:
            h = abs(step) * max(_MIN_FACTOR, _SAFETY * norm ** (-1 / (_ORDER + 1)))
            rejected_last = True
    raise RuntimeError(f"RK45: more than {max_steps} steps from t={t0:g} to t={t1:g}")
