"""Affine SDE marginals against closed forms, the moment ODEs, and Euler–Maruyama simulation."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.errors import ConfigError
from lcssm.sde import VESDE, VPSDE, SubVPSDE, get_sde

SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]


def test_ve_closed_form():
    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    x0 = torch.ones(3, 2, dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    torch.testing.assert_close(mean, x0)
    torch.testing.assert_close(std, 0.01 * 5000.0**t)
    _, g = sde.sde(x0, t)
    torch.testing.assert_close(g, 0.01 * 5000.0**t * math.sqrt(2 * math.log(5000.0)))


def test_vp_subvp_closed_form():
    t = torch.tensor([1e-4, 0.5, 1.0], dtype=torch.float64)
    integral = 0.1 * t + 0.5 * (20 - 0.1) * t**2
    x0 = torch.full((3, 1), 2.0, dtype=torch.float64)
    m_vp, s_vp = VPSDE().marginal(x0, t)
    m_sub, s_sub = SubVPSDE().marginal(x0, t)
    torch.testing.assert_close(m_vp[:, 0], 2.0 * torch.exp(-0.5 * integral))
    torch.testing.assert_close(m_sub, m_vp)
    torch.testing.assert_close(s_vp, torch.sqrt(1 - torch.exp(-integral)))
    torch.testing.assert_close(s_sub, 1 - torch.exp(-integral))
    _, g_vp = VPSDE().sde(x0, t)
    _, g_sub = SubVPSDE().sde(x0, t)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(g_vp, beta.sqrt())
    torch.testing.assert_close(g_sub, torch.sqrt(beta * (1 - torch.exp(-2 * integral))))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_solve_the_moment_odes(sde):
    """For f = a(t)x: dα/dt = a(t)α and dσ²/dt = 2a(t)σ² + g(t)² (central finite differences)."""
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-5
    x0 = torch.ones(7, 1, dtype=torch.float64)
    a = sde.sde(x0, t)[0][:, 0]  # f(1, t) = a(t)
    g2 = sde.diffusion(t) ** 2
    (mp, sp), (mm, sm), (m, s) = sde.marginal(x0, t + h), sde.marginal(x0, t - h), sde.marginal(x0, t)
    torch.testing.assert_close((mp - mm)[:, 0] / (2 * h), a * m[:, 0], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close((sp**2 - sm**2) / (2 * h), 2 * a * s**2 + g2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_euler_maruyama_matches_marginal(sde):
    """Mean and variance of simulated x_t agree with the closed form within MC error (+ O(dt) bias)."""
    n = 40_000
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, 2)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    xt = sde.simulate(x0, t, n_steps=400, generator=torch.Generator().manual_seed(0))
    mean, std = sde.marginal(x0[:1], t[:1])
    var = std.item() ** 2
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2 / n)
    assert torch.all((xt.mean(0) - mean[0]).abs() < 4 * se_mean + 0.01 * mean[0].abs())
    assert torch.all((xt.var(0) - var).abs() < 4 * se_var + 0.01 * var)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_logp_and_sample(sde):
    z = sde.prior_sample((50_000, 3), generator=torch.Generator().manual_seed(0))
    assert abs(z.std().item() - sde.prior_std()) < 0.01 * sde.prior_std()
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z[:5]).sum(1)
    torch.testing.assert_close(sde.prior_logp(z[:5]), ref)


def test_std_is_accurate_near_t0():
    """σ_t = √(1 − e^{−∫β}) is formed with expm1: no cancellation at t = 1e-7 in float32."""
    t = torch.tensor([1e-7])
    _, std = VPSDE().marginal(torch.zeros(1, 1), t)
    assert abs(std.item() - math.sqrt(0.1 * 1e-7)) < 1e-3 * math.sqrt(0.1 * 1e-7)


def test_get_sde_and_bad_parameters():
    assert isinstance(get_sde("ve", sigma_max=10.0), VESDE)
    assert isinstance(get_sde("subvp"), SubVPSDE)
    with pytest.raises(ConfigError, match="valid: ve, vp, subvp"):
        get_sde("vpp")
    with pytest.raises(ConfigError, match="sigma_min"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ConfigError, match="sigma_min"):
        VESDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ConfigError, match="beta"):
        VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ConfigError, match="bad parameters"):
        get_sde("ve", beta_min=0.1)
