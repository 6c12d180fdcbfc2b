#!/usr/bin/env python
"""lcssm's hand-written k-NN structure metrics and RK45 against the libraries they duplicate, side by side in one
process: agreement of the numbers and wall time, so that "keep our own or adopt the library" rests on measurements.

    python benchmarks/bench_alternatives.py [--case all|prdc|ode] [--sizes 500,2000,5000] [--k 5]
        [--shapes 16x3,256x64] [--tols 1e-3,1e-5] [--repeats 3] [--threads 1] [--no-pin]

Case ``prdc``: ``lcssm.metrics.knn_precision_recall`` + ``density_coverage`` against ``prdc.compute_prdc`` (Naeem
et al. 2020) on the same float64 points: Gaussian clouds in 2-D and 64-D, and 2-D points on an integer lattice,
where exact distance ties (duplicates, radius-0 balls) show that lcssm counts a point on a ball's boundary as
inside (``<=``) and prdc does not (``<``). Case ``ode``: ``lcssm.sampling.rk45.rk45`` against
``scipy.integrate.solve_ivp(method="RK45")`` and ``torchdiffeq.odeint(method="dopri5")`` (as is, and with
``options={"step_t": [t1]}``, which makes it land on t1 instead of overshooting and interpolating) on the
probability-flow ODE of Gaussian data N(m, diag v) under the VP SDE, whose solution is known in closed form:
sampling (T -> t_min) and the likelihood ODE (t_min -> T with the exact divergence; the error is in bits/dim).
Columns: NFE (drift evaluations), max error against the closed form, max difference from scipy's result, the
times the drift was evaluated at outside [t_min, T], and the wall time (median [quartiles] of interleaved rounds).

Needs the optional packages ``prdc`` and ``torchdiffeq`` (not lcssm dependencies); a case whose package is missing
prints which one and is skipped, with exit code 0. By default the process is pinned to one CPU (``--no-pin``: not),
so that prdc's hard-coded ``n_jobs=8`` in scikit-learn and torch's threads get the same single core. Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import os
import sys

import numpy as np
import torch
from torch import Tensor

from lcssm.bench.timing import time_round_robin
from lcssm.metrics.structure import density_coverage, knn_precision_recall
from lcssm.sampling.rk45 import rk45
from lcssm.sde import VPSDE

T_MIN = 1e-3


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------------------------------------- case prdc
def _point_sets(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "lattice":  # quantised 2-D points: many exact duplicates and distance ties
        return rng.integers(0, 12, (n, 2)).astype(np.float64), rng.integers(1, 13, (n, 2)).astype(np.float64)
    d = int(kind.removeprefix("gauss-").removesuffix("d"))
    return rng.standard_normal((n, d)), 1.1 * rng.standard_normal((n, d)) + 0.1


def _lcssm_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, ...]:
    return (*knn_precision_recall(real, fake, k=k), *density_coverage(real, fake, k=k))


def _prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, ...]:
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes on every call
        out = compute_prdc(real, fake, k)
    return tuple(float(out[key]) for key in ("precision", "recall", "density", "coverage"))


def _fmt4(values: tuple[float, ...]) -> str:
    return " / ".join(f"{v:.4g}" for v in values)


def run_prdc(sizes: list[int], k: int, repeats: int) -> None:
    print(f"## k-NN precision / recall / density / coverage, k={k}: lcssm.metrics vs prdc.compute_prdc\n")
    print("| points | n | lcssm P / R / D / C | prdc P / R / D / C | max abs diff | lcssm s | prdc s | lcssm / prdc |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for kind in ("gauss-2d", "gauss-64d", "lattice"):
        for n in sizes:
            real, fake = _point_sets(kind, n, rng)
            ours, theirs = _lcssm_prdc(real, fake, k), _prdc(real, fake, k)
            diff = max(abs(a - b) for a, b in zip(ours, theirs))
            t = time_round_robin({"lcssm": lambda r=real, f=fake: _lcssm_prdc(r, f, k),
                                  "prdc": lambda r=real, f=fake: _prdc(r, f, k)}, repeats=repeats, warmup=1)
            print(f"| {kind} | {n} | {_fmt4(ours)} | {_fmt4(theirs)} | {diff:.2g} | {t['lcssm'].fmt()} | "
                  f"{t['prdc'].fmt()} | {t['lcssm'].median / t['prdc'].median:.2f} |", flush=True)
    print()


# -------------------------------------------------------------------------------------------------- case ode
class _Problem:
    """Data N(mean, diag var) in ``d`` dims under lcssm's VP SDE: the probability-flow drift
    ``−½β(t)(x + ∇log p_t(x))`` with the exact score ``−(x − α_t m)/s_t²``, ``s_t² = α_t² v + σ_t²`` (cheap, so the
    times are the solvers' own overhead: with a network, time follows NFE), and the closed-form flow
    ``x_t = α_t m + s_t/s_u·(x_u − α_u m)``."""

    def __init__(self, n: int, d: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.sde = VPSDE()
        self.n, self.d = n, d
        self.mean = torch.randn(d, generator=g, dtype=torch.float64)
        self.var = 0.05 + 1.5 * torch.rand(d, generator=g, dtype=torch.float64)
        self.x_T = self.sde.prior_sample((n, d), generator=g).double()
        alpha, std = self._coef(T_MIN)
        self.x_0 = alpha * self.mean + std * torch.randn(n, d, generator=g, dtype=torch.float64)  # from p_{t_min}
        self.times: list[float] = []

    def _coef(self, t: float) -> tuple[Tensor, Tensor]:
        (alpha,), (sigma,) = self.sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64))
        return alpha, torch.sqrt(alpha**2 * self.var + sigma**2)

    def flow(self, x: Tensor, t_from: float, t_to: float) -> Tensor:
        (a_u, s_u), (a_t, s_t) = self._coef(t_from), self._coef(t_to)
        return a_t * self.mean + s_t / s_u * (x - a_u * self.mean)

    def _gauss_logp(self, x: Tensor, t: float) -> Tensor:
        alpha, std = self._coef(t)
        return (-0.5 * torch.log(2 * math.pi * std**2) - (x - alpha * self.mean) ** 2 / (2 * std**2)).sum(1)

    def drift(self, t, x: Tensor) -> Tensor:
        t = float(t)
        self.times.append(t)
        alpha, std = self._coef(t)
        return -0.5 * self.sde.beta(torch.tensor(t, dtype=torch.float64)) * (x - (x - alpha * self.mean) / std**2)

    def augmented(self, t, y: Tensor) -> Tensor:
        """The likelihood ODE's state (x, ∫div): the drift and its exact divergence Σ_i ½β(1/s_t,i² − 1)."""
        x = y[: self.n * self.d].view(self.n, self.d)
        drift = self.drift(t, x)
        beta = self.sde.beta(torch.tensor(float(t), dtype=torch.float64))
        div = (0.5 * beta * (1 / self._coef(float(t))[1] ** 2 - 1)).sum()
        return torch.cat([drift.flatten(), div.expand(self.n)])

    def bpd_exact(self) -> Tensor:
        """Bits/dim of ``x_0`` from the exact flow with the N(0, I) prior at T, as the ODE gives it."""
        x_T = self.flow(self.x_0, T_MIN, self.sde.T)
        logp = self.sde.prior_logp(x_T) + self._gauss_logp(self.x_0, T_MIN) - self._gauss_logp(x_T, self.sde.T)
        return -logp / (self.d * math.log(2))

    def bpd_of(self, end: Tensor) -> Tensor:
        x_T, delta = end[: self.n * self.d].view(self.n, self.d), end[self.n * self.d:]
        return -(self.sde.prior_logp(x_T) + delta) / (self.d * math.log(2))


def _solvers(fun, t0: float, t1: float, y0: Tensor, tol: float) -> dict:
    """Each solver as a function of no arguments returning y(t1)."""
    from scipy.integrate import solve_ivp
    from torchdiffeq import odeint

    shape = y0.shape
    span = torch.tensor([t0, t1], dtype=torch.float64)

    def scipy_rk45() -> Tensor:
        sol = solve_ivp(lambda t, v: fun(t, torch.from_numpy(v).view(shape)).numpy().ravel(), (t0, t1),
                        y0.numpy().ravel(), method="RK45", rtol=tol, atol=tol)
        if not sol.success:
            raise RuntimeError(sol.message)
        return torch.from_numpy(sol.y[:, -1]).view(shape)

    return {
        "lcssm rk45": lambda: rk45(fun, t0, t1, y0, rtol=tol, atol=tol)[0],
        "scipy RK45": scipy_rk45,
        "torchdiffeq dopri5": lambda: odeint(fun, y0, span, rtol=tol, atol=tol, method="dopri5")[-1],
        "torchdiffeq dopri5 step_t=[t1]": lambda: odeint(fun, y0, span, rtol=tol, atol=tol, method="dopri5",
                                                         options={"step_t": span[1:]})[-1],
    }


def run_ode(shapes: list[tuple[int, int]], tols: list[float], repeats: int) -> None:
    print("## Probability-flow ODE of Gaussian data, VP SDE: lcssm rk45 vs scipy RK45 vs torchdiffeq dopri5\n")
    print("Error columns: sample, max |x - exact| at t_min; bpd, max |bits/dim - exact|.\n")
    print("| ODE | n x d | rtol=atol | solver | NFE | max err vs exact | max diff vs scipy | t outside [t_min, T] "
          "| ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in ("sample", "bpd"):
        for n, d in shapes:
            prob = _Problem(n, d)
            if task == "sample":
                fun, t0, t1, y0 = prob.drift, prob.sde.T, T_MIN, prob.x_T
                exact, measure = prob.flow(prob.x_T, prob.sde.T, T_MIN), (lambda y: y)
            else:
                fun, t0, t1 = prob.augmented, T_MIN, prob.sde.T
                y0 = torch.cat([prob.x_0.flatten(), torch.zeros(n, dtype=torch.float64)])
                exact, measure = prob.bpd_exact(), prob.bpd_of
            for tol in tols:
                solvers = _solvers(fun, t0, t1, y0, tol)
                rows, ok = {}, {}
                for name, solve in solvers.items():
                    prob.times = []
                    try:
                        value = measure(solve())
                        failed = None if bool(torch.isfinite(value).all()) else "non-finite result"
                    except (AssertionError, RuntimeError) as e:  # torchdiffeq asserts on a step-size underflow
                        value, failed = None, str(e).splitlines()[0]
                    lo, hi = min(prob.times), max(prob.times)
                    outside = [f"{v:.3g}" for v in (lo, hi) if not T_MIN - 1e-12 <= v <= prob.sde.T + 1e-12]
                    rows[name] = (len(prob.times), value, failed, ", ".join(outside) or "none")
                    if failed is None:
                        ok[name] = solve
                times = time_round_robin(ok, repeats=repeats, warmup=1)
                reference = rows["scipy RK45"][1]
                for name, (nfe, value, failed, outside) in rows.items():
                    if failed:
                        err, diff, ms = f"fails: {failed}", "-", "-"
                    else:
                        err = f"{float((value - exact).abs().max()):.3g}"
                        diff = "-" if reference is None else f"{float((value - reference).abs().max()):.3g}"
                        ms = times[name].fmt(1e3)
                    print(f"| {task} | {n} x {d} | {tol:g} | {name} | {nfe} | {err} | {diff} | {outside} | {ms} |",
                          flush=True)
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("all", "prdc", "ode"), default="all")
    p.add_argument("--sizes", default="500,2000,5000", help="numbers of real (and fake) points, case prdc")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--shapes", default="16x3,256x64", help="batch x dims of the ODE state, case ode")
    p.add_argument("--tols", default="1e-3,1e-5", help="rtol = atol of the ODE solvers, case ode")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="pin the process to one CPU (default: on, where the OS allows)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{torch.get_num_threads()} torch thread(s), {cpus} CPU(s) usable, torch {torch.__version__}, "
          f"numpy {np.__version__}\n")
    cases = ("prdc", "ode") if args.case == "all" else (args.case,)
    needs = {"prdc": ("prdc",), "ode": ("scipy", "torchdiffeq")}
    for case in cases:
        missing = _missing(*needs[case])
        if missing:
            print(f"case {case} skipped: the optional package(s) {', '.join(missing)} are not installed "
                  f"(pip install {' '.join(missing)})\n")
            continue
        if case == "prdc":
            run_prdc([int(s) for s in args.sizes.split(",")], args.k, args.repeats)
        else:
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
            run_ode(shapes, [float(s) for s in args.tols.split(",")], args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
