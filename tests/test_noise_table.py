"""Noise-level statistics of any SDE (lcssm.noise_table, lcssm.noise_levels.tabulate), the local Gaussian center
and the samplers that read them (``pf_heun``)."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.data.toy import two_spirals
from lcssm.diffusion import diffusion_loss, local_start
from lcssm.errors import ConfigError
from lcssm.noise_levels import level_of, tabulate, time_of
from lcssm.noise_table import NoiseTable
from lcssm.objectives import dsm, lcss
from lcssm.sde import VESDE, VPSDE, TanhSDE, gaussian_data_score


class SimulatedVP(VPSDE):
    """VP, tabulated by simulation as a non-affine SDE would be (its closed form is the reference)."""

    has_marginal = False


def _spirals(n: int = 4000) -> torch.Tensor:
    return two_spirals(n, torch.Generator().manual_seed(0)).double()


def test_the_table_of_an_affine_sde_is_its_closed_form():
    x0 = _spirals()
    for sde in (VPSDE(), VESDE(sigma_max=5.0)):
        table = tabulate(sde, x0, generator=torch.Generator().manual_seed(1))
        t = torch.tensor(table.times, dtype=torch.float64)
        alpha, sigma = sde.marginal_coefficients(t)
        torch.testing.assert_close(torch.tensor(table.alpha, dtype=torch.float64), alpha, rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.tensor(table.sigma, dtype=torch.float64), sigma, rtol=1e-12, atol=0)
        # between grid times the interpolation (linear in log t) stays within 1 % of the closed form
        mid = (t[1:] * t[:-1]).sqrt()
        a, s = table.coefficients(mid)
        a_ref, s_ref = sde.marginal_coefficients(mid)
        assert float(((a - a_ref) / a_ref).abs().max()) < 1e-2 and float(((s - s_ref) / s_ref).abs().max()) < 1e-2


def test_the_simulated_table_agrees_with_the_closed_form_within_monte_carlo_error():
    """2,048 rows x 2 paths in 2-D: v(t) averages 4,096 squared path differences, relative std sqrt(2/4096) = 2.2 %,
    sigma half that (1.1 %; measured 1.2-1.4 % over the grid); 5 % is ~4 std at the worst of 128 times.
    alpha (the flow's mean slope) is deterministic for an affine SDE: only the time discretisation errs."""
    x0 = _spirals()
    table = tabulate(SimulatedVP(), x0, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(table.times, dtype=torch.float64)
    alpha, sigma = VPSDE().marginal_coefficients(t)
    got_a, got_s = (torch.tensor(v, dtype=torch.float64) for v in (table.alpha, table.sigma))
    assert float(((got_a - alpha) / alpha).abs().max()) < 2e-3
    assert float(((got_s - sigma) / sigma).abs().max()) < 0.05
    var0 = float(x0.var(0, unbiased=False).mean())
    std = torch.sqrt(alpha**2 * var0 + sigma**2)
    got_std = torch.tensor(table.std, dtype=torch.float64)
    assert float(((got_std - std) / std).abs().max()) < 0.05  # Var(x_t): ~1.6 % relative


def test_a_tanh_table_ends_at_the_stationary_spread_and_is_increasing_in_level():
    sde = TanhSDE()
    table = tabulate(sde, _spirals(), generator=torch.Generator().manual_seed(3))
    assert table.std[-1] == pytest.approx(sde.prior_std(), rel=0.03)  # mixed: the stationary sech^4 law
    levels = [s / a for s, a in zip(table.sigma, table.alpha)]
    assert all(b >= a for a, b in zip(levels, levels[1:]))
    assert table.alpha[0] == pytest.approx(1.0, abs=1e-3) and table.alpha[-1] < 0.05


def test_a_table_round_trips_and_inverts_its_levels():
    table = tabulate(TanhSDE(), _spirals(1000), generator=torch.Generator().manual_seed(4))
    assert NoiseTable.from_dict(table.to_dict()) == table
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
    a, s = table.coefficients(t)
    torch.testing.assert_close(table.time_at_level(s / a), t, rtol=1e-9, atol=0)
    with pytest.raises(ConfigError, match="times, alpha, sigma, std"):
        NoiseTable.from_dict({"times": [0.1, 1.0]})
    with pytest.raises(ConfigError, match="increase"):
        NoiseTable((0.5, 0.1), (1.0, 1.0), (0.1, 0.2), (1.0, 1.0))


def test_the_local_start_carries_at_most_the_chosen_spread():
    """α_t²(ς_t² − ς_s²) = h² where σ_t > h; s = 0 (the whole kernel from x0) where σ_t ≤ h."""
    t = torch.tensor([0.001, 0.01, 0.1, 0.5, 0.9])
    tanh = TanhSDE().with_table(tabulate(TanhSDE(), _spirals(1000), generator=torch.Generator().manual_seed(5)))
    for sde in (VPSDE(), tanh):
        alpha, sigma = sde.marginal_coefficients(t.double())
        for h in (0.1, 0.5):
            s = local_start(sde, t, h)
            wide = sigma > h
            assert torch.equal(s[~wide], torch.zeros_like(s[~wide])) and bool((s[wide] > 0).all())
            spread = alpha**2 * (level_of(sde, t.double()) ** 2 - level_of(sde, s.double()) ** 2)
            torch.testing.assert_close(spread[wide], torch.full_like(spread[wide], h**2), rtol=1e-4, atol=0)
    with pytest.raises(ConfigError, match="local_width"):
        local_start(VPSDE(), t, 0.0)


def test_lcss_equals_dsm_up_to_a_constant_on_a_diagonal_kernel():
    """γ = 1, the same z: LCSS − DSM = −½‖z/σ‖² per sample, for a per-coordinate σ (the local Gaussian's), so the
    two have the same gradient draw by draw."""
    torch.manual_seed(0)
    x, z = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    sigma = 0.05 + torch.rand(6, 3, dtype=torch.float64)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def score(y):
        return torch.tanh(y @ w)

    a, b = lcss(score, x, sigma, z=z), dsm(score, x, sigma, z=z)
    torch.testing.assert_close(a - b, -0.5 * (z / sigma).pow(2).sum(1), rtol=1e-12, atol=1e-12)
    ga, = torch.autograd.grad(a.sum(), w)
    gb, = torch.autograd.grad(b.sum(), w)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    # a per-sample sigma written out per coordinate is the per-sample kernel
    s1 = sigma[:, 0]
    torch.testing.assert_close(lcss(score, x, s1, z=z), lcss(score, x, s1[:, None].expand(6, 3).contiguous(), z=z),
                               rtol=1e-14, atol=1e-14)


def test_the_local_center_trains_a_tanh_run_and_refuses_without_levels():
    sde = TanhSDE()
    x0 = _spirals(64).float()
    net = torch.nn.Linear(3, 2)

    def score(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    with pytest.raises(ConfigError, match="no noise table|no closed form"):
        diffusion_loss(score, sde, x0, center="local")
    tabled = sde.with_table(tabulate(sde, x0, generator=torch.Generator().manual_seed(6)))
    for objective in ("lcss", "dsm", "ssm_vr"):
        loss = diffusion_loss(score, tabled, x0, objective=objective, center="local", t_min=1e-3,
                              generator=torch.Generator().manual_seed(7))
        assert loss.shape == (64,) and bool(torch.isfinite(loss).all())


def test_pf_heun_matches_the_sigma_parametrised_heun_on_an_affine_sde():
    """Both integrate the same probability-flow ODE (in t and in the noise level): with the exact score of Gaussian
    data and many steps they end at the same points."""
    from lcssm.experiments.spec import SamplerSpec
    from lcssm.sampling.registry import get_sampler

    sde = VPSDE()
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.3, 0.1], [0.1, 0.2]])
    score = gaussian_data_score(sde, mean, cov)
    x = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(0))
    out = {}
    for name in ("pf_heun", "heun"):
        spec = SamplerSpec(name=name, nfe=399, t_min=1e-3)
        out[name], nfe = get_sampler(name, sde).run(score, sde, x, spec, None, False)
        assert nfe == 399 if name == "pf_heun" else nfe <= 400  # 199 Heun steps and the denoising step
    assert float((out["pf_heun"] - out["heun"]).abs().max()) < 2e-3
    assert float((out["pf_heun"].mean(0) - mean).abs().max()) < 0.1  # and it is the data's law (256 samples)


def test_a_non_affine_sde_refuses_the_sigma_parametrised_solvers_in_one_line():
    from lcssm.sampling.registry import get_sampler

    with pytest.raises(ConfigError, match="closed-form Gaussian marginal") as e:
        get_sampler("dpmpp_2m", TanhSDE())
    assert "\n" not in str(e.value) and "pf_heun" in str(e.value)


def test_time_of_a_tabulated_sde_inverts_its_levels():
    sde = TanhSDE().with_table(tabulate(TanhSDE(), _spirals(1000), generator=torch.Generator().manual_seed(8)))
    t = torch.tensor([0.002, 0.05, 0.3, 0.8], dtype=torch.float64)
    torch.testing.assert_close(time_of(sde, level_of(sde, t)), t, rtol=1e-8, atol=0)
    assert math.isfinite(float(level_of(sde, torch.tensor([sde.T], dtype=torch.float64))))


def test_the_stationary_skip_is_gaussian_skip_for_vp_and_the_stationary_score_at_the_end():
    from lcssm.models.precond import ScoreModel
    from lcssm.sde import StudentTSDE

    class Zero(torch.nn.Module):
        def forward(self, x, t, sigma):
            return torch.zeros_like(x)

    x, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor([1e-3, 0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    vp = VPSDE()
    torch.testing.assert_close(ScoreModel(Zero(), vp, c_out="stationary_skip")(x, t),
                               ScoreModel(Zero(), vp, c_out="gaussian_skip")(x, t), rtol=1e-12, atol=1e-12)
    sde = StudentTSDE()
    sde = sde.with_table(tabulate(sde, _spirals(1000), generator=torch.Generator().manual_seed(9)))
    end = ScoreModel(Zero(), sde, c_out="stationary_skip")(x, torch.ones(5, dtype=torch.float64))
    a, s = (float(v) for v in sde.marginal_coefficients(torch.ones(1, dtype=torch.float64)))
    assert a < 0.2  # the Student-t SDE mixes slowly: the flow's mean slope is still 0.14 at T
    torch.testing.assert_close(end, a**2 * (-x / (a**2 + s**2)) + (1 - a**2) * sde.stationary_score(x),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sde.stationary_score(x), -(sde.nu + 1) * x / (sde.nu + x**2))  # 2φ
    with pytest.raises(ConfigError, match="stationary law"):
        ScoreModel(Zero(), VESDE(), c_out="stationary_skip")
