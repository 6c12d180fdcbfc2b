"""The 1-D Fokker–Planck reference solver (lcssm.metrics.fokker_planck): VP's closed-form marginal and second-order
convergence, mass and positivity, TanhSDE's stationary law, Monte Carlo moments, and the probability-flow ODE with
the grid score carrying the prior back to the data."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.errors import ConfigError
from lcssm.metrics.fokker_planck import FokkerPlanckSolution, fokker_planck_times, solve_fokker_planck
from lcssm.sampling.ode import ode_sample
from lcssm.sde import VPSDE, TanhSDE

F64 = torch.float64
#: VP test data: two narrow components at ±1
MU = torch.tensor([-1.0, 1.0], dtype=F64)
STD = torch.tensor([0.1, 0.15], dtype=F64)
W = torch.tensor([0.5, 0.5], dtype=F64)
TIMES = (0.01, 0.1, 0.5, 1.0)
# Errors of the (h = 0.02, 1000 steps) solution against the closed form, max over the grid (density) and over the
# bulk p_t > 1e-3·max (score). Measured: density 1.25e-3, 2.3e-4, 5.6e-7, 1.1e-10; score 0.32, 0.043, 4.4e-5,
# 1.9e-9. test_vp_errors_are_second_order shows they are in the asymptotic regime C·h² (halving h and the step
# divides them by 4.0), so they are the discretisation error, not noise; the tolerances allow 1.6× (t = 1: the
# discrete OU stationary state is the exact Gaussian, see the module docstring, and only ~1e-10 remains).
DENSITY_TOL = {0.01: 2e-3, 0.1: 4e-4, 0.5: 1e-6, 1.0: 1e-9}
SCORE_TOL = {0.01: 0.5, 0.1: 0.07, 0.5: 7e-5, 1.0: 5e-9}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture(x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Density and score of Σ_k w_k N(mu_k, var_k) at x (N,)."""
    comp = w * torch.exp(-((x[:, None] - mu) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)
    p = comp.sum(1)
    return p, (comp * (-(x[:, None] - mu) / var)).sum(1) / p


def vp_marginal(sde: VPSDE, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """p_t of the mixture under VP: means α_t μ_k, variances α_t² s_k² + σ_t²."""
    alpha, sigma = sde.marginal_coefficients(torch.tensor([t], dtype=F64))
    return mixture(x, alpha * MU, alpha**2 * STD**2 + sigma**2, W)


def vp_errors(n_cells: int, n_steps: int) -> dict[float, tuple[float, float]]:
    sde = VPSDE()
    x = torch.linspace(-8, 8, n_cells, dtype=F64)
    sol = solve_fokker_planck(sde, x, mixture(x, MU, STD**2, W)[0], torch.tensor(TIMES, dtype=F64), n_steps=n_steps)
    errors = {}
    for t in TIMES:
        p, score = vp_marginal(sde, x, t)
        bulk = p > 1e-3 * p.max()
        errors[t] = ((sol.density(t) - p).abs().max().item(), (sol.grid_score(t) - score)[bulk].abs().max().item())
    return errors


def ks_distance(samples: torch.Tensor, cdf) -> float:
    xs, _ = samples.flatten().double().sort()
    n = xs.numel()
    f = cdf(xs)
    upper = torch.arange(1, n + 1, dtype=F64) / n
    return max((upper - f).max().item(), (f - (upper - 1 / n)).max().item())


def ks_critical(n: int) -> float:
    """Kolmogorov–Smirnov critical value at level 1e-3 (asymptotic)."""
    return 1.95 / math.sqrt(n)


@pytest.fixture(scope="module")
def fine_errors() -> dict[float, tuple[float, float]]:
    return vp_errors(801, 1000)


# ---------------------------------------------------------------------------------------------- VP closed form
def test_vp_density_and_score_match_the_closed_form(fine_errors):
    for t in TIMES:
        density_err, score_err = fine_errors[t]
        assert density_err < DENSITY_TOL[t], (t, density_err)
        assert score_err < SCORE_TOL[t], (t, score_err)


def test_vp_errors_are_second_order(fine_errors):
    """Halving h and the time step (uniform in the log-clock) divides the error by ~4."""
    coarse = vp_errors(401, 500)
    for t in (0.01, 0.1, 0.5):
        for k in (0, 1):
            ratio = coarse[t][k] / fine_errors[t][k]
            assert 3.3 < ratio < 4.7, (t, k, ratio)  # measured 3.6–4.4; first order would give 2


def test_score_fn_interface_and_cdf():
    sde = VPSDE()
    x = torch.linspace(-8, 8, 401, dtype=F64)
    sol = solve_fokker_planck(sde, x, mixture(x, MU, STD**2, W)[0], fokker_planck_times(sde, 50), n_steps=300)
    assert isinstance(sol, FokkerPlanckSolution) and "401" in repr(sol)
    pts = torch.tensor([[-1.3], [0.2], [0.9], [20.0]])
    t = torch.tensor([0.3, 0.3, 0.7, 0.3])
    s = sol.score(pts, t)
    assert s.shape == (4, 1) and s.dtype == torch.float32
    # at grid points and stored times the score is the grid score; scalar t is broadcast
    k = 10
    tk = float(sol.times[k])
    on_grid = sol.score(sol.x_grid[100:103, None], tk)
    torch.testing.assert_close(on_grid[:, 0], sol.grid_score(tk)[100:103])
    torch.testing.assert_close(s[3], sol.score(sol.x_grid[-1:, None].float(), 0.3)[0])  # outside: edge value
    torch.testing.assert_close(sol.log_density(tk).exp()[150:250], sol.density(tk)[150:250])
    cdf = sol.cdf(torch.tensor([-100.0, 0.0, 100.0], dtype=F64), 0.5)
    assert cdf[0] == 0 and abs(cdf[1] - 0.5) < 1e-3 and abs(cdf[2] - 1) < 1e-12
    with pytest.raises(ConfigError, match=r"\(B, 1\)"):
        sol.score(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ConfigError, match="t must have shape"):
        sol.score(torch.zeros(3, 1), torch.zeros(2))


# ---------------------------------------------------------------------------------------------- TanhSDE
def tanh_grid(n: int = 961) -> torch.Tensor:
    return torch.linspace(-12, 12, n, dtype=F64)


def test_tanh_mass_is_conserved_and_density_stays_positive():
    sde = TanhSDE()
    x = tanh_grid()
    starts = {"mixture": torch.exp(-((x - 1) ** 2) / 0.02) + torch.exp(-((x + 1.5) ** 2) / 0.02),
              "delta": (torch.arange(x.numel()) == 480).to(F64)}  # a non-smooth start (Rannacher steps)
    for p0 in starts.values():
        sol = solve_fokker_planck(sde, x, p0, fokker_planck_times(sde, 60), n_steps=400)
        mass_err = max(abs(sol.mass(float(t)) - 1) for t in sol.times)
        assert mass_err < 1e-10, mass_err
        assert sol.densities.min() >= 0
        assert sol.densities[-1].max() > 0.3  # it went somewhere: near the stationary peak 3/8


def test_tanh_stationary_density_stays_put():
    sde = TanhSDE()
    x = tanh_grid()
    stationary = sde.prior_logp(x[:, None]).exp()  # (3/8) sech⁴(x/2)
    sol = solve_fokker_planck(sde, x, stationary, torch.linspace(0, 1, 21, dtype=F64), n_steps=1000)
    drift = (sol.densities - stationary).abs().max().item()
    assert drift < 5e-6, drift  # measured 1.95e-6 (h = 0.025; O(h²): SG is exact for the discrete stationary state)
    score = sol.grid_score(0.7)[1:-1]
    exact = -2 * torch.tanh(x[1:-1] / 2)  # 2f/g²
    assert (score - exact).abs().max() < 1e-4


def test_tanh_moments_match_monte_carlo():
    sde = TanhSDE()
    mu, std, w = torch.tensor([-1.5, 1.0], dtype=F64), 0.15, torch.tensor([0.3, 0.7], dtype=F64)
    x = tanh_grid()
    p0 = (w * torch.exp(-((x[:, None] - mu) ** 2) / (2 * std**2))).sum(1)
    times = (0.2, 0.5)
    sol = solve_fokker_planck(sde, x, p0, torch.tensor(times, dtype=F64), n_steps=1000)
    n = 50_000
    g = gen(0)
    comp = torch.multinomial(w, 2 * n, replacement=True, generator=g)
    x0 = (mu[comp] + std * torch.randn(2 * n, generator=g, dtype=F64))[:, None]
    t_each = torch.tensor(times, dtype=F64).repeat_interleave(n)
    xt = sde.simulate(x0, t_each, n_steps=500, generator=g)[:, 0]  # Euler–Maruyama bias ~1e-3 here
    for j, t in enumerate(times):
        cells = sol.density(t) * sol.h
        mean = (cells * x).sum().item()
        var = (cells * (x - mean) ** 2).sum().item()
        mc = xt[j * n:(j + 1) * n]
        mc_mean, mc_var = mc.mean().item(), mc.var().item()
        se_mean = math.sqrt(mc_var / n)
        se_var = math.sqrt(((mc - mc_mean) ** 4).mean().item() / n - mc_var**2 / n)
        assert abs(mean - mc_mean) < 4 * se_mean, (t, mean, mc_mean, se_mean)
        assert abs(var - mc_var) < 4 * se_var, (t, var, mc_var, se_var)
    assert (sol.density(0.2) * sol.h * x).sum() > 0.1  # the mean 0.25 has not yet mixed away


# ---------------------------------------------------------------------------------------------- probability flow
PF_MU = torch.tensor([-1.5, 1.0], dtype=F64)
PF_STD = 0.15
PF_W = torch.tensor([0.4, 0.6], dtype=F64)
T_MIN = 0.01


@pytest.mark.parametrize("sde, half_width", [(TanhSDE(), 12.0), (VPSDE(), 8.0)], ids=["tanh", "vp"])
def test_probability_flow_with_the_grid_score_carries_the_prior_to_the_data(sde, half_width):
    x = torch.linspace(-half_width, half_width, 481, dtype=F64)
    p0 = (PF_W * torch.exp(-((x[:, None] - PF_MU) ** 2) / (2 * PF_STD**2))).sum(1)
    sol = solve_fokker_planck(sde, x, p0, fokker_planck_times(sde, 200, t_min=T_MIN), n_steps=500)
    n = 4000
    z = sde.prior_sample((n, 1), generator=gen(1))
    samples, _ = ode_sample(sol.score, sde, z, t_min=T_MIN, denoise=False)
    crit = ks_critical(n)
    ks = ks_distance(samples, lambda v: sol.cdf(v, T_MIN))
    assert ks < crit, (ks, crit)  # measured 0.013 (tanh), 0.014 (vp); critical 0.031
    swapped = ks_distance(samples, lambda v: (PF_W.flip(0) * 0.5 * (1 + torch.erf(
        (v[:, None] - PF_MU) / (math.sqrt(2) * PF_STD)))).sum(1))
    assert swapped > 0.1  # the test has power: weights 0.6/0.4 are rejected
    if sde.has_marginal:  # VP: against the closed form too
        alpha, sigma = sde.marginal_coefficients(torch.tensor([T_MIN], dtype=F64))
        sd = torch.sqrt(alpha**2 * PF_STD**2 + sigma**2)
        exact = ks_distance(samples, lambda v: (PF_W * 0.5 * (1 + torch.erf(
            (v[:, None] - alpha * PF_MU) / (math.sqrt(2) * sd)))).sum(1))
        assert exact < crit, (exact, crit)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_config_errors():
    sde = TanhSDE()
    x = torch.linspace(-4, 4, 81, dtype=F64)
    p0 = torch.exp(-(x**2))
    t = torch.tensor([0.5], dtype=F64)
    bad = [
        (dict(x_grid=x**3), "uniform"),
        (dict(x_grid=x.flip(0)), "increasing"),
        (dict(x_grid=x[:, None]), "1-D"),
        (dict(p0=p0[:-1]), "shape of x_grid"),
        (dict(p0=p0 - 0.5), "non-negative"),
        (dict(p0=torch.zeros_like(p0)), "zero mass"),
        (dict(p0=p0[:, None]), "1-D"),
        (dict(times=torch.tensor([0.5, 1.5], dtype=F64)), r"\[0, T"),
        (dict(times=torch.tensor([-0.1], dtype=F64)), r"\[0, T"),
        (dict(times=torch.tensor([0.5, 0.2], dtype=F64)), "increasing"),
        (dict(times=torch.tensor(0.5, dtype=F64)), "1-D"),
        (dict(n_steps=0), "n_steps"),
        (dict(tau0=-1.0), "tau0"),
        (dict(rannacher=-1), "rannacher"),
    ]
    for override, match in bad:
        kwargs = {"x_grid": x, "p0": p0, "times": t, **override}
        with pytest.raises(ConfigError, match=match):
            solve_fokker_planck(sde, **kwargs)
    with pytest.raises(ConfigError, match="t_min"):
        fokker_planck_times(sde, 10, t_min=1.0)
    # a float32 linspace grid is uniform enough; t = 0 alone returns p0 (normalised)
    sol = solve_fokker_planck(sde, x.float(), p0, torch.tensor([0.0], dtype=F64))
    torch.testing.assert_close(sol.density(0.0), p0 / (p0.sum() * sol.h))
