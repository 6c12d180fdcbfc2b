"""The non-affine TanhSDE (stationary prior, simulation, training with the simulated center) and the SDE interface
added for the samplers: discretize and reverse."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.diffusion import diffusion_loss
from lcssm.errors import ConfigError
from lcssm.models import ScoreMLP
from lcssm.sde import SDES, VESDE, VPSDE, SubVPSDE, TanhSDE, get_sde

Z = 4.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prior_cdf(x: torch.Tensor) -> torch.Tensor:
    """CDF of logit(u), u ~ Beta(2, 2): the regularised incomplete beta I_u(2, 2) = 3u² − 2u³."""
    u = torch.sigmoid(x)
    return 3 * u**2 - 2 * u**3


def ks_distance(x: torch.Tensor) -> float:
    xs, _ = x.flatten().double().sort()
    n = xs.numel()
    cdf = prior_cdf(xs)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    return max((upper - cdf).max().item(), (cdf - (upper - 1 / n)).max().item())


def ks_critical(n: int) -> float:
    """Kolmogorov–Smirnov critical value at level 1e-3 (asymptotic)."""
    return 1.95 / math.sqrt(n)


# ---------------------------------------------------------------------------------------------- TanhSDE
def test_tanh_sde_is_registered_and_not_affine():
    sde = get_sde("tanh", beta_max=10.0)
    assert isinstance(sde, TanhSDE) and SDES["tanh"] is TanhSDE and sde.beta_max == 10.0
    assert not sde.has_marginal
    with pytest.raises(ConfigError, match="simulated"):
        sde.marginal(torch.zeros(2, 1), torch.ones(2))
    with pytest.raises(ConfigError, match="beta_min"):
        TanhSDE(beta_min=5.0, beta_max=1.0)
    x = torch.tensor([[0.0], [1.0], [2.0], [8.0]], dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    beta = 0.1 + 0.5 * 9.9
    torch.testing.assert_close(drift, -beta * torch.tanh(x / 2))
    torch.testing.assert_close(g, torch.full((4,), math.sqrt(beta), dtype=torch.float64))
    # f(2x) != 2f(x): the drift is not linear in x
    assert (drift[2] - 2 * drift[1]).abs() > 0.1


def test_tanh_prior_density_sampler_and_moments():
    sde = TanhSDE()
    grid = torch.linspace(-40, 40, 200_001, dtype=torch.float64)[:, None]
    density = sde.prior_logp(grid).exp()
    dx = (grid[1] - grid[0]).item()
    assert abs(density.sum().item() * dx - 1) < 1e-8
    assert abs((density * grid[:, 0] ** 2).sum().item() * dx - sde.prior_std() ** 2) < 1e-8
    z = sde.prior_sample((20_000, 1), generator=gen())
    assert ks_distance(z) < ks_critical(z.numel())
    # the sampler and the density agree with the stationary law of the Fokker–Planck equation:
    # ∂_x(f p) = ½ g² ∂²_x p, i.e. f p = ½ g² ∂_x p, i.e. ∂_x log p = 2 f / g² = −2 tanh(x/2)
    x = torch.linspace(-6, 6, 25, dtype=torch.float64)[:, None].requires_grad_(True)
    (score,) = torch.autograd.grad(sde.prior_logp(x).sum(), x)
    drift, g = sde.sde(x.detach(), torch.full((25,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(score, 2 * drift / g[:, None] ** 2)


def test_simulate_keeps_the_stationary_law_and_forgets_the_start():
    sde, n = TanhSDE(), 20_000
    z = sde.prior_sample((n, 1), generator=gen(1)).double()
    for t in (0.3, 1.0):
        x = sde.simulate(z, t, n_steps=200, generator=gen(2))
        assert ks_distance(x) < ks_critical(n), t
    # from point masses: at 0 the process mixes at VP's rate; from ±2 the bounded drift leaves a small bias
    # (documented: mean 0.05 from x0 = 2, against a prior std of 1.14)
    x = sde.simulate(torch.zeros(n, 1, dtype=torch.float64), 1.0, n_steps=200, generator=gen(3))
    assert ks_distance(x) < ks_critical(n)
    x = sde.simulate(torch.full((n, 1), 2.0, dtype=torch.float64), 1.0, n_steps=200, generator=gen(4))
    assert abs(x.mean().item()) < 0.1
    assert ks_distance(x) < 0.05
    # non-affine: the mean from 4 is not twice the mean from 2 (affine SDEs: E[x_t] = α_t x0)
    y = sde.simulate(torch.full((n, 1), 4.0, dtype=torch.float64), 0.2, n_steps=200, generator=gen(5))
    x = sde.simulate(torch.full((n, 1), 2.0, dtype=torch.float64), 0.2, n_steps=200, generator=gen(6))
    se = math.sqrt((x.var() + y.var() / 4).item() / n)
    assert (y.mean() / 2 - x.mean()).abs().item() > Z * se


def _gaussian_pair(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, 2, generator=g)


def test_simulated_center_trains_lcss_on_the_nonaffine_sde():
    """A time-conditional ScoreMLP trained with lcss through diffusion_loss(center='simulated') lowers the loss on
    a fixed evaluation draw (same t, same simulation noise, same z) by more than Z paired standard errors. The
    evaluation uses antithetic pairs (same expectation, without the O(1/σ) variance of the Stein term)."""
    torch.manual_seed(0)
    sde = TanhSDE()
    model = ScoreMLP(dim=2, hidden=64, n_hidden=2, time_embed="fourier", embed_dim=16)
    x_eval = _gaussian_pair(2048, gen(10))

    def eval_loss() -> torch.Tensor:
        return diffusion_loss(model, sde, x_eval, objective="lcss", center="simulated", n_sim_steps=50,
                              antithetic=True, generator=gen(11)).detach()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = gen(12)
    for _ in range(150):
        loss = diffusion_loss(model, sde, _gaussian_pair(256, g), objective="lcss", center="simulated",
                              n_sim_steps=50, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    diff = before - eval_loss()
    assert diff.mean() > Z * diff.std() / math.sqrt(diff.numel()), (before.mean(), diff.mean())


def test_nonaffine_sde_refuses_dsm_and_closed_form_centers():
    sde, model = TanhSDE(), ScoreMLP(dim=2, hidden=8, n_hidden=1, time_embed="fourier", embed_dim=8)
    x = torch.zeros(4, 2)
    with pytest.raises(ConfigError, match="dsm"):
        diffusion_loss(model, sde, x, objective="dsm", center="simulated")
    for center in ("marginal", "data"):
        with pytest.raises(ConfigError, match="simulated"):
            diffusion_loss(model, sde, x, objective="lcss", center=center)


# ------------------------------------------------------------------------------- discretize and reverse
def test_generic_discretize_is_euler_maruyama():
    sde = TanhSDE()
    x = torch.randn(5, 3, generator=gen(), dtype=torch.float64)
    t = torch.rand(5, generator=gen(1), dtype=torch.float64)
    f, G = sde.discretize(x, t, 0.01)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(f, drift * 0.01)
    torch.testing.assert_close(G, g * 0.1)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_affine_discretize_is_the_exact_transition_kernel(sde):
    """Composing the one-step kernels from 0 to t in k steps gives the marginal exactly (mean and variance
    propagate as m ← (1 + f/x)m, v ← (1 + f/x)²v + G²); to first order it is Euler–Maruyama."""
    k, t_end = 7, 0.8
    x = torch.ones(1, 1, dtype=torch.float64)
    m, v = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    v = v + sde.marginal_coefficients(torch.zeros(1, dtype=torch.float64))[1] ** 2  # VE: σ(0) = σ_min
    for i in range(1, k + 1):
        f, G = sde.discretize(x, torch.tensor([t_end * i / k], dtype=torch.float64), t_end / k)
        a = 1 + f[0, 0]
        m, v = a * m, a**2 * v + G**2
    alpha, sigma = sde.marginal_coefficients(torch.tensor([t_end], dtype=torch.float64))
    torch.testing.assert_close(m, alpha)
    torch.testing.assert_close(v, sigma**2)
    t, dt = torch.tensor([0.5], dtype=torch.float64), 1e-6
    f, G = sde.discretize(x, t, dt)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(f / dt, drift, rtol=1e-4, atol=0)
    torch.testing.assert_close(G / math.sqrt(dt), g, rtol=1e-4, atol=0)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sde_drift_and_diffusion(probability_flow):
    sde = TanhSDE()
    x = torch.randn(6, 2, generator=gen(), dtype=torch.float64)
    t = torch.rand(6, generator=gen(1), dtype=torch.float64)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x * t[:, None]

    rsde = sde.reverse(score, probability_flow=probability_flow)
    drift, g = sde.sde(x, t)
    c = 0.5 if probability_flow else 1.0
    r_drift, r_g = rsde.sde(x, t)
    torch.testing.assert_close(r_drift, drift - c * g[:, None] ** 2 * score(x, t))
    torch.testing.assert_close(r_g, torch.zeros_like(g) if probability_flow else g)
    f, G = sde.discretize(x, t, 0.01)
    r_f, r_G = rsde.discretize(x, t, 0.01)
    torch.testing.assert_close(r_f, f - c * G[:, None] ** 2 * score(x, t))
    torch.testing.assert_close(r_G, torch.zeros_like(G) if probability_flow else G)
    with pytest.raises(ValueError, match="shape"):
        sde.reverse(lambda x, t: x[:, :1]).sde(x, t)
