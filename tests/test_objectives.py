"""Every objective against an analytic case, an identity or a brute-force computation (DESIGN.md §2)."""

from __future__ import annotations

import pytest
import torch

from lcssm.errors import ConfigError
from lcssm.objectives import OBJECTIVES, dsm, exact_sm, fdssm, get_objective, lcss, ssm, ssm_vr

D = 3


@pytest.fixture
def linear():
    """A linear score s(x) = Ax + b (float64) and the exact J_SM per sample: tr A + ½‖Ax + b‖²."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    x = torch.randn(4, D, generator=g, dtype=torch.float64)

    def score(y):
        return y @ A.T + b

    j_sm = torch.trace(A) + 0.5 * (x @ A.T + b).pow(2).sum(1)
    return score, A, x, j_sm


def _mc(fn, x, n, **kw):
    """Per-sample mean and standard error of a stochastic objective from n independent draws each."""
    g = torch.Generator().manual_seed(1)
    vals = fn(x.repeat(n, 1), generator=g, **kw).view(n, -1)
    return vals.mean(0), vals.std(0) / n**0.5


def nonlinear_score(x):
    W = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.1], [-0.7, 0.4, 0.9]], dtype=x.dtype)
    return torch.tanh(x @ W.T + 0.3) + 0.1 * x**2


def nonlinear_trace(x):
    W = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.1], [-0.7, 0.4, 0.9]], dtype=x.dtype)
    u = x @ W.T + 0.3
    return ((1 - torch.tanh(u) ** 2) * torch.diagonal(W)).sum(1) + (0.2 * x).sum(1)


def test_stein_identity_corollary2():
    """E_z[s(x+σz)ᵀz/σ] = E_z[tr ∇s(x+σz)] for a nonlinear s, to within 4 Monte-Carlo standard errors."""
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    sigma, n = 0.7, 400_000
    z = torch.randn(n, D, generator=g, dtype=torch.float64)
    xp = x + sigma * z
    stein = (nonlinear_score(xp) * z).sum(1) / sigma
    trace = nonlinear_trace(xp)
    diff = stein - trace
    assert abs(diff.mean()) < 4 * diff.std() / n**0.5
    # and the identity is not trivially satisfied: the two estimators differ sample by sample
    assert diff.std() > 0.1


def test_exact_sm_linear_is_exact(linear):
    score, _, x, j_sm = linear
    torch.testing.assert_close(exact_sm(score, x), j_sm, rtol=1e-12, atol=1e-12)


def test_exact_sm_matches_bruteforce_jacobian_on_images():
    """On (B, 1, 2, 2) inputs the trace equals that of the full autograd Jacobian."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    score = lambda y: torch.tanh(conv(y))
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    got = exact_sm(score, x)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda y: score(y[None])[0], x[i]).reshape(4, 4)
        want = torch.trace(J) + 0.5 * score(x[i : i + 1]).pow(2).sum()
        torch.testing.assert_close(got[i], want)


@pytest.mark.parametrize("fn,noise", [(ssm, "rademacher"), (ssm, "gaussian"), (ssm_vr, "rademacher"),
                                      (ssm_vr, "gaussian")])
def test_sliced_unbiased_for_linear_score(linear, fn, noise):
    score, _, x, j_sm = linear
    mean, se = _mc(lambda y, **kw: fn(score, y, **kw), x, 20_000, probe=noise)
    assert torch.all((mean - j_sm).abs() < 4 * se + 1e-9), (mean, j_sm, se)


def test_sliced_given_probe_matches_formula(linear):
    """With a given probe v: ssm = vᵀAv + ½(vᵀs)², ssm_vr = vᵀAv + ½‖s‖² (brute force)."""
    score, A, x, _ = linear
    v = torch.randn(2, *x.shape, dtype=torch.float64)
    s = score(x)
    vav = torch.einsum("nbi,ij,nbj->nb", v, A, v)
    torch.testing.assert_close(ssm(score, x, v=v), (vav + 0.5 * (v * s).sum(-1) ** 2).mean(0))
    torch.testing.assert_close(ssm_vr(score, x, v=v), (vav + 0.5 * s.pow(2).sum(-1)).mean(0))


def test_fdssm_is_unbiased_for_linear_score(linear):
    """For s = Ax + b the central difference is exact: E[d·uᵀAu/‖u‖²] = tr A for any ε."""
    score, _, x, j_sm = linear
    for fd_eps in (0.5, 0.01):
        mean, se = _mc(lambda y, **kw: fdssm(score, y, **kw), x, 20_000, fd_eps=fd_eps)
        assert torch.all((mean - j_sm).abs() < 4 * se + 1e-9)


def test_fdssm_approaches_exact_sm_on_nonlinear_score():
    """With many slices and a small ε, FD-SSM estimates tr ∇s + ½‖s‖² of a nonlinear score."""
    x = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.4, -0.8]], dtype=torch.float64)
    want = exact_sm(nonlinear_score, x).detach()
    mean, se = _mc(lambda y, **kw: fdssm(nonlinear_score, y, **kw), x, 40_000, fd_eps=1e-3)
    assert torch.all((mean - want).abs() < 4 * se + 1e-5)


def test_given_fdssm_v_uses_its_own_norm(linear):
    score, A, x, _ = linear
    v = torch.randn(x.shape, dtype=torch.float64) * 0.3
    got = fdssm(score, x, v=v)
    d_vAv = D * ((v @ A.T) * v).sum(1) / v.pow(2).sum(1)
    torch.testing.assert_close(got, d_vAv + 0.5 * score(x).pow(2).sum(1))


def test_lcss_lemma1_exact_for_linear_score(linear):
    """E[lcss] = tr A + ½‖Ax+b‖² + ½σ²‖A‖²_F (Lemma 1 holds without remainder for a linear score)."""
    score, A, x, j_sm = linear
    for sigma in (0.5, 2.0):
        want = j_sm + 0.5 * sigma**2 * A.pow(2).sum()
        mean, se = _mc(lambda y, sigma=sigma, **kw: lcss(score, y, sigma, **kw), x, 100_000)
        assert torch.all((mean - want).abs() < 4 * se), (sigma, mean, want, se)
        # the curvature term is resolved: a wrong σ²-term would be detected
        assert torch.all(0.5 * sigma**2 * A.pow(2).sum() > 8 * se)


def test_lcss_antithetic_unbiased_and_lower_variance(linear):
    score, A, x, j_sm = linear
    sigma = 0.01
    want = j_sm + 0.5 * sigma**2 * A.pow(2).sum()
    mean_a, se_a = _mc(lambda y, **kw: lcss(score, y, sigma, **kw), x, 20_000, antithetic=True)
    mean_p, se_p = _mc(lambda y, **kw: lcss(score, y, sigma, **kw), x, 20_000)
    assert torch.all((mean_a - want).abs() < 4 * se_a)
    assert torch.all((mean_p - want).abs() < 4 * se_p)
    # plain LCSS carries the O(1/σ) variance of sᵀz/σ; antithetic pairs remove it
    assert torch.all(se_a < se_p / 10), (se_a, se_p)


def test_lcss_antithetic_lower_variance_nonlinear():
    x = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.4, -0.8]], dtype=torch.float64)
    _, se_a = _mc(lambda y, **kw: lcss(nonlinear_score, y, 0.01, **kw), x, 4000, antithetic=True)
    _, se_p = _mc(lambda y, **kw: lcss(nonlinear_score, y, 0.01, **kw), x, 4000)
    assert torch.all(se_a < se_p / 10)


def test_lcss_n_samples_averages_given_noise(linear):
    score, _, x, _ = linear
    z = torch.randn(5, *x.shape, dtype=torch.float64)
    each = torch.stack([lcss(score, x, 0.3, z=z[k]) for k in range(5)])
    torch.testing.assert_close(lcss(score, x, 0.3, z=z), each.mean(0))


class _MLPScore(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.SiLU(), torch.nn.Linear(32, D)).double()

    def forward(self, x):
        return self.net(x)


def _grads(model, loss):
    return torch.autograd.grad(loss.sum(), list(model.parameters()))


@pytest.mark.parametrize("sigma", [0.05, 1.0, torch.tensor([0.1, 0.5, 2.0, 0.01], dtype=torch.float64)])
def test_lcss_dsm_differ_by_constant_and_share_gradients(sigma):
    model = _MLPScore()
    x = torch.randn(4, D, dtype=torch.float64)
    z = torch.randn(4, D, dtype=torch.float64)
    l_dsm, l_lcss = dsm(model, x, sigma, z=z), lcss(model, x, sigma, z=z)
    torch.testing.assert_close(l_dsm - l_lcss, 0.5 * z.pow(2).sum(1) / sigma**2)
    for a, b in zip(_grads(model, l_dsm), _grads(model, l_lcss)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lcss_gamma_not_one_changes_gradients():
    model = _MLPScore()
    x, z = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    g_dsm = _grads(model, dsm(model, x, 0.5, z=z))
    g_lcss = _grads(model, lcss(model, x, 0.5, z=z, gamma=2.0))
    assert max((a - b).abs().max().item() for a, b in zip(g_dsm, g_lcss)) > 1e-3


def test_weighted_forms_equal_weight_times_loss():
    model = _MLPScore()
    x, z = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 2.0, 0.01], dtype=torch.float64)
    r, w = sigma * 1.7, (sigma * 1.7) ** 2
    torch.testing.assert_close(lcss(model, x, sigma, z=z, sqrt_weight=r), w * lcss(model, x, sigma, z=z))
    torch.testing.assert_close(dsm(model, x, sigma, z=z, sqrt_weight=r), w * dsm(model, x, sigma, z=z))
    v = torch.randn(4, D, dtype=torch.float64)
    torch.testing.assert_close(ssm(model, x, v=v, sqrt_weight=r), w * ssm(model, x, v=v))


def test_weighted_lcss_stable_at_tiny_sigma():
    """With λ = σ² the loss is formed as γσ·sᵀz + ½σ²‖s‖² (no 1/σ² then σ²): float32 at σ = 1e-25, where
    1/σ² overflows, still matches the float64 value of that formula."""
    model = _MLPScore().float()
    x, z = torch.randn(4, D), torch.randn(4, D)
    sigma = torch.full((4,), 1e-25)
    loss = lcss(model, x, sigma, z=z, sqrt_weight=sigma, gamma=1.5)
    s = model(x + sigma[:, None] * z).double()
    want = 1.5 * 1e-25 * (s * z.double()).sum(1) + 0.5 * 1e-50 * s.pow(2).sum(1)
    assert torch.isinf(1 / sigma**2).all()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_returns_per_sample_loss(name):
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    score = lambda y: conv(y)
    x = torch.randn(5, 2, 3, 3)
    fn = get_objective(name)
    assert fn.name == name and fn.needs_sigma == (name in ("dsm", "lcss"))
    out = fn(score, x, sigma=0.5) if fn.needs_sigma else fn(score, x)
    assert out.shape == (5,) and torch.isfinite(out).all()
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_generator_makes_objectives_reproducible():
    model = _MLPScore()
    x = torch.randn(4, D, dtype=torch.float64)
    for name in ("ssm", "ssm_vr", "fdssm", "dsm", "lcss"):
        fn = get_objective(name)
        kw = {"sigma": 0.3} if fn.needs_sigma else {}
        a = fn(model, x, **kw, generator=torch.Generator().manual_seed(3))
        b = fn(model, x, **kw, generator=torch.Generator().manual_seed(3))
        c = fn(model, x, **kw, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)


def test_objective_calling_contract():
    """One convention: sigma by keyword, required by the noise objectives and refused by the others; options by
    the function's own keyword names (unknown ones are a ConfigError naming the valid ones)."""
    model = _MLPScore()
    x = torch.randn(4, D, dtype=torch.float64)
    assert set(OBJECTIVES) == {"exact_sm", "ssm", "ssm_vr", "fdssm", "dsm", "lcss"}
    assert [n for n, o in OBJECTIVES.items() if o.needs_sigma] == ["dsm", "lcss"]
    with pytest.raises(ConfigError, match="lcss needs a noise scale sigma"):
        get_objective("lcss")(model, x)
    with pytest.raises(ConfigError, match="ssm takes no sigma"):
        get_objective("ssm")(model, x, sigma=0.3)
    with pytest.raises(ConfigError, match="lcss takes no option 'fd_eps'; its options: gamma, antithetic, n_samples"):
        get_objective("lcss")(model, x, sigma=0.3, fd_eps=0.1)
    with pytest.raises(ConfigError, match="dsm takes no option 'gamma'; its options: none"):
        get_objective("dsm")(model, x, sigma=0.3, gamma=2.0)
    # options pass through unchanged to the plain function
    torch.testing.assert_close(get_objective("lcss")(model, x, sigma=0.3, gamma=2.0, n_samples=2,
                                                     generator=torch.Generator().manual_seed(0)),
                               lcss(model, x, 0.3, gamma=2.0, n_samples=2, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(get_objective("fdssm")(model, x, fd_eps=0.2, generator=torch.Generator().manual_seed(0)),
                               fdssm(model, x, fd_eps=0.2, generator=torch.Generator().manual_seed(0)))


def test_unknown_objective_lists_valid_names():
    with pytest.raises(ConfigError, match="lcss.*") as e:
        get_objective("lcsss")
    assert "exact_sm" in str(e.value) and "fdssm" in str(e.value)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.1, 0.0, 0.2, 0.3])])
def test_bad_sigma_rejected(sigma):
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match="sigma"):
        lcss(lambda y: y, x, sigma)
    with pytest.raises(ValueError, match="sigma"):
        dsm(lambda y: y, x, sigma)


def test_bad_shapes_and_counts_rejected():
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match="n_slices|draws"):
        ssm(lambda y: y, x, n_slices=0)
    with pytest.raises(ValueError, match="draws"):
        lcss(lambda y: y, x, 0.1, n_samples=0)
    with pytest.raises(ValueError, match="shape"):
        lcss(lambda y: y, x, 0.1, z=torch.randn(4, D + 1))
    with pytest.raises(ValueError, match="shape"):
        lcss(lambda y: y, x, torch.ones(3))
    with pytest.raises(ValueError, match="score_fn"):
        dsm(lambda y: y[:, :2], x, 0.1)
    with pytest.raises(ValueError, match="shape"):
        exact_sm(lambda y: y, torch.randn(4))
    with pytest.raises(ValueError, match="fd_eps"):
        fdssm(lambda y: y, x, fd_eps=0.0)
