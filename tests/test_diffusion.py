"""Time-conditional loss: centers, weightings, the LCSS/DSM identity through the SDE, and error paths."""

from __future__ import annotations

import pytest
import torch

from lcssm.diffusion import diffusion_loss
from lcssm.errors import ConfigError
from lcssm.objectives import OBJECTIVES, lcss
from lcssm.sde import VESDE, VPSDE, SubVPSDE


class TimeScore(torch.nn.Module):
    def __init__(self, d=2):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, d)).double()

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], 1))


def _loss(sde, seed=0, **kw):
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 1.0
    return diffusion_loss(TimeScore(), sde, x0, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("objective", ["lcss", "dsm", "ssm_vr"])
def test_marginal_equals_data_center_for_ve_only(objective):
    torch.testing.assert_close(_loss(VESDE(), objective=objective, center="marginal"),
                               _loss(VESDE(), objective=objective, center="data"))
    for sde in (VPSDE(), SubVPSDE()):
        a = _loss(sde, objective=objective, center="marginal")
        b = _loss(sde, objective=objective, center="data")
        assert (a - b).abs().max() > 1e-3


def test_sigma2_weighting_equals_sigma_squared_times_lcss():
    """diffusion_loss reproduces λ·lcss at x′ = α_t x0 + σ_t z with the same t and z (recomputed by hand)."""
    sde = VPSDE()
    x0 = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, 8, dtype=torch.float64)
    model = TimeScore()
    got = diffusion_loss(model, sde, x0, t=t, generator=torch.Generator().manual_seed(1))
    z = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean, std = sde.marginal(x0, t)
    want = std**2 * lcss(lambda x: model(x, t), mean, std, z=z)
    torch.testing.assert_close(got, want)


def test_g2_and_none_weightings():
    sde = SubVPSDE()
    x0 = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, 8, dtype=torch.float64)
    kw = dict(t=t, objective="dsm")
    none = diffusion_loss(TimeScore(), sde, x0, weighting="none", generator=torch.Generator().manual_seed(1), **kw)
    g2 = diffusion_loss(TimeScore(), sde, x0, weighting="g2", generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(g2, sde.diffusion(t) ** 2 * none)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_lcss_and_dsm_share_gradients_through_the_sde(sde):
    model = TimeScore()
    x0 = torch.randn(16, 2, dtype=torch.float64)
    grads = []
    for objective in ("lcss", "dsm"):
        loss = diffusion_loss(model, sde, x0, objective=objective, generator=torch.Generator().manual_seed(3))
        grads.append(torch.autograd.grad(loss.mean(), list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("center", ["marginal", "data", "simulated"])
def test_every_objective_and_center_runs(objective, center):
    if center == "simulated" and objective == "dsm":
        pytest.skip("refused, tested below")
    loss = _loss(VPSDE(), objective=objective, center=center, n_sim_steps=10)
    assert loss.shape == (16,) and torch.isfinite(loss).all()


def test_n_samples_repeats_time_for_stacked_rows():
    seen = []

    def model(x, t):
        seen.append((x.shape[0], t.shape[0]))
        return -x

    x0 = torch.randn(5, 2)
    diffusion_loss(model, VESDE(), x0, objective="lcss", n_samples=3, antithetic=True)
    assert seen == [(30, 30)]


def test_errors():
    with pytest.raises(ConfigError, match="dsm needs the closed-form transition kernel"):
        _loss(VPSDE(), objective="dsm", center="simulated")
    with pytest.raises(ConfigError, match="unknown center"):
        _loss(VPSDE(), center="middle")
    with pytest.raises(ConfigError, match="unknown weighting"):
        _loss(VPSDE(), weighting="lambda")
    with pytest.raises(ConfigError, match="unknown objective"):
        _loss(VPSDE(), objective="sm")
    with pytest.raises(ConfigError, match="t_min"):
        _loss(VPSDE(), t_min=0.0)
    with pytest.raises(ConfigError, match="t_min"):
        _loss(VPSDE(), t_min=1.0)
    with pytest.raises(ConfigError, match="sigma_s"):
        _loss(VPSDE(), center="simulated", sigma_s=0.0)


def test_fdssm_perturbation_passes_as_fd_eps():
    """diffusion_loss's smallest time is ``t_min``; FD-SSM's step goes through by fdssm's own name ``fd_eps``, and
    an option the objective does not take is refused, naming the ones it does."""
    a = _loss(VPSDE(), objective="fdssm", fd_eps=0.5)
    b = _loss(VPSDE(), objective="fdssm", fd_eps=0.01)
    assert a.shape == (16,) and torch.isfinite(a).all() and not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="lcss takes no option 'fd_eps'; its options: gamma, antithetic, n_samples"):
        _loss(VPSDE(), objective="lcss", fd_eps=0.1)
    with pytest.raises(ConfigError, match="fdssm takes no option 'eps'"):
        _loss(VPSDE(), objective="fdssm", eps=0.1)
