"""Fixed-grid samplers (lcssm.sampling.solvers), noise schedules (lcssm.sampling.schedules) and the torch RK45
(lcssm.sampling.rk45) against
closed forms: Gaussian data, whose exact score and probability-flow solution are known, an independent transcription
of the Karras et al. (2022) / Lu et al. (2022) algorithms, and scipy's RK45."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from lcssm.cli import main
from lcssm.errors import ConfigError
from lcssm.sampling.ode import ode_sample
from lcssm.sampling.registry import SAMPLERS, get_sampler
from lcssm.sampling.rk45 import rk45
from lcssm.sampling.schedules import level_of, noise_schedule, time_of
from lcssm.sampling.solvers import SOLVERS, sample
from lcssm.sde import VESDE, VPSDE, SubVPSDE, TanhSDE, gaussian_data_score

MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
VAR = torch.tensor([0.3, 1.5, 0.05], dtype=torch.float64)
T_MIN = 1e-3


def _start(sde, n: int = 8, seed: int = 0) -> torch.Tensor:
    return sde.prior_sample((n, 3), generator=torch.Generator().manual_seed(seed)).double()


def _exact(sde, x: torch.Tensor) -> torch.Tensor:
    """The exact probability-flow solution from T to t_min, then Tweedie's E[x_0 | x_{t_min}], for N(MEAN, diag VAR):
    in y = x/α_t, y(ς) − m = √((v + ς²)/(v + ς_T²))·(y_T − m), and E[x_0 | y] = m + v/(v + ς²)·(y − m)."""
    hi, lo = level_of(sde, torch.tensor([sde.T, T_MIN], dtype=torch.float64)).tolist()
    alpha_t = float(sde.marginal_coefficients(torch.tensor([sde.T], dtype=torch.float64))[0])
    y_lo = MEAN + torch.sqrt((VAR + lo**2) / (VAR + hi**2)) * (x / alpha_t - MEAN)
    return MEAN + VAR / (VAR + lo**2) * (y_lo - MEAN)


def _score(sde):
    return gaussian_data_score(sde, MEAN, torch.diag(VAR))


# --------------------------------------------------------------------------------------- order of convergence
ORDERS = [("euler", 1, "karras", [16, 32, 64, 128]), ("heun", 2, "karras", [31, 63, 127, 255]),
          ("dpmpp_2m", 2, "karras", [16, 32, 64, 128]), ("dpm3", 3, "log_sigma", [49, 97, 193])]


@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize(("name", "order", "schedule", "nfes"), ORDERS, ids=[o[0] for o in ORDERS])
def test_order_of_convergence_on_gaussian_data(sde, name, order, schedule, nfes):
    """The error against the exact ODE solution falls as NFE^-order (log-log fit over a doubling of the levels)."""
    x = _start(sde)
    ref = _exact(sde, x)
    errors = []
    for nfe in nfes:
        out, used = sample(_score(sde), sde, x, sampler=name, nfe=nfe, schedule=schedule, t_min=T_MIN)
        assert used == nfe
        errors.append((out - ref).abs().max().item())
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert order - 0.25 < slope < order + 0.5, (errors, slope)
    assert errors[-1] < 0.1  # converging to the exact solution (a wrong limit would flatten the slope too)


# ------------------------------------------------------------------------- independent transcription (VE, karras)
def _karras(n: int, lo: float, hi: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) Eq. 5: n levels, then 0."""
    return [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]


def _ve_denoiser(sde: VESDE):
    """D(x, σ) = x + σ²·s(x, t(σ)) with VE's closed-form t(σ) = T·log(σ/σ_min)/log(σ_max/σ_min)."""
    score = _score(sde)

    def denoise(x, sigma):
        t = sde.T * math.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        return x + sigma**2 * score(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    return denoise


def _reference_heun(denoise, x, sigmas):
    """Karras et al. (2022), Algorithm 1 (S_churn = 0): Heun, Euler on the step to 0."""
    for s, s_next in zip(sigmas, sigmas[1:]):
        d = (x - denoise(x, s)) / s
        x_euler = x + (s_next - s) * d
        x = x_euler if s_next == 0 else x + (s_next - s) * (d + (x_euler - denoise(x_euler, s_next)) / s_next) / 2
    return x


def _reference_dpmpp_2m(denoise, x, sigmas):
    """Lu et al. (2022), DPM-Solver++(2M), written in t = −log σ: x ← (σ'/σ)x − (e^{−h} − 1)·D̃."""
    prev = None
    for i, (s, s_next) in enumerate(zip(sigmas, sigmas[1:])):
        d0 = denoise(x, s)
        if s_next == 0:
            x = d0
            continue
        t, t_next = -math.log(s), -math.log(s_next)
        h = t_next - t
        if prev is None:
            x = (s_next / s) * x - (math.exp(-h) - 1) * d0
        else:
            r = (t - (-math.log(sigmas[i - 1]))) / h
            x = (s_next / s) * x - (math.exp(-h) - 1) * ((1 + 1 / (2 * r)) * d0 - prev / (2 * r))
        prev = d0
    return x


@pytest.mark.parametrize("n", [2, 5, 18])
def test_heun_and_dpmpp_2m_match_the_papers_algorithms_on_a_karras_grid(n):
    sde = VESDE(0.01, 10.0)
    x = _start(sde, seed=n)
    lo = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (T_MIN / sde.T)  # ς at t_min
    sigmas = _karras(n, lo, sde.sigma_max)
    np.testing.assert_allclose(noise_schedule(sde, n, "karras", t_min=T_MIN).numpy(), sigmas, rtol=1e-13)
    heun, nfe = sample(_score(sde), sde, x, sampler="heun", nfe=2 * n - 1, schedule="karras", t_min=T_MIN)
    assert nfe == 2 * n - 1
    torch.testing.assert_close(heun, _reference_heun(_ve_denoiser(sde), x, sigmas), rtol=1e-10, atol=1e-10)
    dpm, nfe = sample(_score(sde), sde, x, sampler="dpmpp_2m", nfe=n, schedule="karras", t_min=T_MIN)
    assert nfe == n
    torch.testing.assert_close(dpm, _reference_dpmpp_2m(_ve_denoiser(sde), x, sigmas), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_schedules(sde):
    hi, lo = level_of(sde, torch.tensor([sde.T, T_MIN], dtype=torch.float64)).tolist()
    for name in ("karras", "log_sigma", "uniform_t"):
        s = noise_schedule(sde, 9, name, t_min=T_MIN)
        assert s.shape == (10,) and s[-1] == 0 and bool(torch.all(s[1:] < s[:-1]))
        assert math.isclose(s[0], hi, rel_tol=1e-12) and math.isclose(s[-2], lo, rel_tol=1e-12)
    ratios = noise_schedule(sde, 9, "log_sigma", t_min=T_MIN)[:-1].log().diff()
    torch.testing.assert_close(ratios, torch.full_like(ratios, math.log(lo / hi) / 8))
    times = time_of(sde, noise_schedule(sde, 9, "uniform_t", t_min=T_MIN)[:-1])
    torch.testing.assert_close(times, torch.linspace(sde.T, T_MIN, 9, dtype=torch.float64), rtol=0, atol=1e-12)
    assert noise_schedule(sde, 1, "karras", t_min=T_MIN).tolist() == [pytest.approx(hi, rel=1e-12), 0.0]


def test_ve_uniform_t_is_log_sigma():
    sde = VESDE(0.01, 10.0)
    torch.testing.assert_close(noise_schedule(sde, 7, "uniform_t"), noise_schedule(sde, 7, "log_sigma"))


# ----------------------------------------------------------------------------------------- stochastic samplers
@pytest.mark.parametrize("name", ["edm", "euler_ancestral"])
def test_stochastic_samplers_draw_the_data_law(name):
    """N(MEAN, diag VAR) from the exact score (VP: its prior is p_T up to e^-5): sample mean and variance within 4
    standard errors plus an allowance for the first-order discretisation bias at 201 NFE (measured: variance ratios
    0.90-1.05; at 41 NFE ancestral Euler's is 0.72, so the allowance is not slack); a seeded generator reproduces
    the samples."""
    sde = VPSDE()
    x = _start(sde, n=4000)
    opts = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 1.0, "s_noise": 1.0} if name == "edm" else {}
    out, _ = sample(_score(sde), sde, x, sampler=name, nfe=201, generator=torch.Generator().manual_seed(1), **opts)
    se = (VAR / x.shape[0]).sqrt()
    assert torch.all((out.mean(0) - MEAN).abs() < 4 * se + 0.03 * VAR.sqrt()), out.mean(0)
    assert torch.all((out.var(0) / VAR - 1).abs() < 4 * math.sqrt(2 / x.shape[0]) + 0.05), out.var(0)
    def draw(seed):
        return sample(_score(sde), sde, x[:50], sampler=name, nfe=21, generator=torch.Generator().manual_seed(seed),
                      **opts)[0]

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def test_edm_without_churn_is_heun_and_nfe_plans():
    sde = VESDE(0.01, 10.0)
    x = _start(sde)
    heun, _ = sample(_score(sde), sde, x, sampler="heun", nfe=11)
    edm, nfe = sample(_score(sde), sde, x, sampler="edm", nfe=11, s_churn=0.0)
    assert nfe == 11 and torch.equal(heun, edm)
    for nfe in range(1, 12):
        assert sample(_score(sde), sde, x, sampler="dpm3", nfe=nfe)[1] == nfe
        assert sample(_score(sde), sde, x, sampler="heun", nfe=nfe)[1] == nfe - (nfe % 2 == 0)


def test_bad_inputs_and_nonaffine_sde():
    sde = VESDE()
    x = _start(sde)
    with pytest.raises(ConfigError, match="unknown sampler 'ddim'"):
        sample(_score(sde), sde, x, sampler="ddim", nfe=10)
    with pytest.raises(ConfigError, match="unknown schedule 'cosine'"):
        sample(_score(sde), sde, x, sampler="heun", nfe=10, schedule="cosine")
    with pytest.raises(ConfigError, match="nfe must be an integer >= 1"):
        sample(_score(sde), sde, x, sampler="heun", nfe=0)
    with pytest.raises(ConfigError, match="closed-form Gaussian marginal .* use the pc or ode sampler"):
        sample(lambda x, t: -x, TanhSDE(), x, sampler="heun", nfe=10)
    for name in SOLVERS:
        with pytest.raises(ConfigError, match=f"the {name} sampler does not apply to a run with TanhSDE.*closed-form"):
            get_sampler(name, TanhSDE())
        assert SAMPLERS[name].needs_marginal


# ------------------------------------------------------------------------------------------------ torch RK45
def test_rk45_matches_scipy_with_equal_nfe():
    from scipy.integrate import solve_ivp

    sde = VESDE(0.01, 10.0)
    rsde = sde.reverse(_score(sde), probability_flow=True)
    x = _start(sde, n=16)

    def f(t, y):
        return rsde.sde(y, torch.full((y.shape[0],), t, dtype=y.dtype))[0]

    for tol in (1e-3, 1e-6):
        y, nfe = rk45(f, sde.T, T_MIN, x, rtol=tol, atol=tol)
        sol = solve_ivp(lambda t, v: f(t, torch.from_numpy(v).view(16, 3)).numpy().ravel(), (sde.T, T_MIN),
                        x.numpy().ravel(), method="RK45", rtol=tol, atol=tol)
        assert nfe <= sol.nfev
        np.testing.assert_allclose(y.numpy().ravel(), sol.y[:, -1], rtol=1e-9, atol=1e-9)
    out, nfe = ode_sample(_score(sde), sde, x, rtol=1e-6, atol=1e-6, t_min=T_MIN)
    torch.testing.assert_close(out, _exact(sde, x), rtol=0, atol=1e-4)
    scipy_out, scipy_nfe = ode_sample(_score(sde), sde, x, rtol=1e-6, atol=1e-6, t_min=T_MIN,
                                      method="DOP853")
    torch.testing.assert_close(out, scipy_out, rtol=0, atol=1e-4)


def test_rk45_bad_tolerance_and_backward_forward():
    with pytest.raises(ConfigError, match="rtol and atol must be > 0"):
        rk45(lambda t, y: y, 0.0, 1.0, torch.ones(2), rtol=0)
    y, _ = rk45(lambda t, y: y, 0.0, 1.0, torch.ones(3, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, torch.full((3,), math.e, dtype=torch.float64), rtol=1e-8, atol=0)


# --------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "run"
    assert main(["train", "--data", "8gaussians", "--sde", "ve", "--objective", "dsm", "--out", str(out), "--steps",
                 "20", "--batch-size", "64", "--hidden", "16", "--n-samples", "0", "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_fixed_grid_sampler_through_the_cli(run_dir, tmp_path, capsys, name):
    dest = tmp_path / f"{name}.npy"
    argv = ["sample", str(run_dir), "--sampler", name, "--nfe", "7", "--schedule", "log_sigma", "--n-samples", "32",
            "--file", str(dest), "--no-progress"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    x = np.load(dest)
    assert x.shape == (32, 2) and np.isfinite(x).all()
    assert info["sampler"] == name and info["nfe"] == 7 and info["schedule"] == "log_sigma" and info["rho"] == 7.0
    assert ("s_churn" in info) == (name == "edm")


@pytest.mark.parametrize(("argv", "match"), [
    (["--sampler", "heun", "--nfe", "0"], "nfe must be >= 1, got 0"),
    (["--sampler", "heun", "--nfe", "x"], "argument --nfe: nfe expects an int, got 'x'"),
    (["--sampler", "heun", "--schedule", "cosine"], "must be one of karras, log_sigma, uniform_t, got 'cosine'"),
    (["--sampler", "heunn"], "must be one of pc, .*heun.*, got 'heunn'"),
    (["--sampler", "edm", "--s-tmin", "2", "--s-tmax", "1"], "s_tmin must satisfy 0 <= s_tmin <= s_tmax"),
])
def test_bad_sampler_flags_exit_2_with_one_line(run_dir, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["sample", str(run_dir), *argv, "--no-progress"]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(match, err), err


def test_likelihood_torch_rk45_matches_scipy_rk45():
    """log p of Gaussian data through the torch RK45 equals scipy's RK45 on the same ODE with no more NFE (the
    closed-form check of the likelihood itself is tests/test_likelihood.py's)."""
    from scipy.integrate import solve_ivp

    from lcssm.metrics.likelihood import _drift_and_divergence, log_likelihood

    sde = VPSDE()
    score = _score(sde)
    x = (MEAN + VAR.sqrt() * torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    logp, nfe = log_likelihood(score, sde, x, exact_trace=True, rtol=1e-6, atol=1e-6, t_min=T_MIN)
    rsde = sde.reverse(score, probability_flow=True)

    def fun(t, v):
        y = torch.from_numpy(v)
        drift, div = _drift_and_divergence(lambda a, b: rsde.sde(a, b)[0], y[:18].view(6, 3),
                                           torch.full((6,), t, dtype=torch.float64), None)
        return torch.cat([drift.flatten(), div]).numpy()

    sol = solve_ivp(fun, (T_MIN, sde.T), np.concatenate([x.numpy().ravel(), np.zeros(6)]), method="RK45",
                    rtol=1e-6, atol=1e-6)
    ref = sde.prior_logp(torch.from_numpy(sol.y[:18, -1]).view(6, 3)) + torch.from_numpy(sol.y[18:, -1])
    assert nfe <= sol.nfev
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-8)
