"""Samplers against exact scores: ULA's stationary law, annealed Langevin on a Gaussian mixture, and the PC and
probability-flow ODE samplers on Gaussian data, whose score and flow are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.errors import ConfigError
from lcssm.noise_levels import noise_level
from lcssm.sampling.langevin import annealed_langevin, geometric_sigmas, langevin, noise_conditional_score
from lcssm.sampling.ode import ode_sample
from lcssm.sampling.reverse import pc_sample
from lcssm.sde import VESDE, VPSDE, SubVPSDE, TanhSDE, gaussian_data_marginal, gaussian_data_score

Z = 4.0  # Monte-Carlo tolerance in standard errors
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]


def start(sde, shape, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The prior draw at T that a sampler starts from, drawn from ``generator`` before the sampler's own noise."""
    return sde.prior_sample(shape, generator=generator).to(dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, bias: float = 0.0) -> None:
    """Sample mean and covariance within Z standard errors (Gaussian fourth moments) of the expected ones."""
    n = x.shape[0]
    var = cov.diagonal()
    se_mean = (var / n).sqrt()
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    err_mean = (x.mean(0) - mean).abs()
    err_cov = (torch.cov(x.T) - cov).abs()
    assert torch.all(err_mean < Z * se_mean + bias), (x.mean(0), mean, se_mean)
    assert torch.all(err_cov < Z * se_cov + bias), (torch.cov(x.T), cov, se_cov)


# ------------------------------------------------------------------------------------------------ Langevin
def test_langevin_stationary_law_of_ula():
    """For N(m, v) the ULA chain x ← x + (ε/2)s + √ε z is AR(1) with stationary variance v / (1 − ε/(4v))."""
    m, v, eps, n = 1.5, 2.0, 0.5, 20_000
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    x = langevin(lambda x: -(x - m) / v, x0, step_size=eps, n_steps=300, generator=gen())
    assert torch.equal(x0, torch.zeros_like(x0))  # input untouched
    var = v / (1 - eps / (4 * v))
    assert abs(x.mean().item() - m) < Z * math.sqrt(var / n)
    assert abs(x.var().item() - var) < Z * var * math.sqrt(2 / n)


def test_langevin_reproducible_and_validated():
    x0 = torch.zeros(10, 2)
    a = langevin(lambda x: -x, x0, step_size=0.1, n_steps=5, generator=gen(3), progress=True)
    b = langevin(lambda x: -x, x0, step_size=0.1, n_steps=5, generator=gen(3))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="step_size"):
        langevin(lambda x: -x, x0, step_size=0.0, n_steps=5)
    with pytest.raises(ConfigError, match="n_steps"):
        langevin(lambda x: -x, x0, step_size=0.1, n_steps=-1)


def mixture_score(w, m, s):
    """Noise-conditional score of the 1-D mixture Σ w_k N(m_k, s_k²) smoothed by N(0, σ²)."""

    def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = s**2 + sigma[:, None] ** 2
        log_r = torch.log(w) - 0.5 * torch.log(v) - (x - m) ** 2 / (2 * v)
        return (torch.softmax(log_r, dim=1) * (-(x - m) / v)).sum(1, keepdim=True)

    return score_fn


def test_annealed_langevin_recovers_mixture_weights():
    """Plain Langevin from a broad start would split the points by their basin of attraction; annealing
    recovers the 0.2/0.8 weights (Song & Ermon 2019, Fig. 3) and the components' spread."""
    w = torch.tensor([0.2, 0.8], dtype=torch.float64)
    m = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    s = torch.tensor([1.0, 1.0], dtype=torch.float64)
    n, sigma_min = 4000, 0.1
    x0 = 10 * torch.randn(n, 1, generator=gen(1), dtype=torch.float64)
    x = annealed_langevin(mixture_score(w, m, s), x0, geometric_sigmas(10.0, sigma_min, 10),
                          step_size=0.5 * sigma_min**2, n_steps_each=100, generator=gen(2))
    phi = 0.5 * (1 + math.erf(3 / math.sqrt(2)))  # P(N(3, 1) > 0)
    p_right = 0.2 * (1 - phi) + 0.8 * phi
    frac = (x > 0).double().mean().item()
    assert abs(frac - p_right) < Z * math.sqrt(p_right * (1 - p_right) / n)
    right = x[x > 0]
    # the denoised samples have variance ≈ 1 − σ_L²; the bias allowance covers that and ULA's O(step) excess
    assert abs(right.var().item() - 1.0) < Z * math.sqrt(2 / right.numel()) + 2 * sigma_min**2
    assert abs(right.mean().item() - 3.0) < Z * math.sqrt(1 / right.numel()) + 0.01


def test_annealed_langevin_validates_sigmas():
    x0 = torch.zeros(4, 1)
    score = mixture_score(torch.ones(1), torch.zeros(1), torch.ones(1))
    with pytest.raises(ConfigError, match="non-increasing"):
        annealed_langevin(score, x0, [0.1, 1.0], step_size=0.1, n_steps_each=1)
    with pytest.raises(ConfigError, match="sigma_min"):
        geometric_sigmas(1.0, 2.0, 5)
    torch.testing.assert_close(geometric_sigmas(8.0, 0.5, 5), torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5],
                                                                          dtype=torch.float64))


# ------------------------------------------------------------------------------------ PC and ODE samplers
def denoised_law(sde, mean_eps: torch.Tensor, cov_eps: torch.Tensor, eps: float):
    """Law of Tweedie's denoiser ``(x + σ²s)/α = μ + αS C⁻¹(x − αμ)`` applied to x ~ N(mean_eps, cov_eps)."""
    t = torch.tensor([eps], dtype=torch.float64)
    alpha = sde.marginal_coefficients(t)[0].item()
    m, c = gaussian_data_marginal(sde, MU, COV, t)
    k = alpha * COV @ torch.linalg.inv(c[0])
    return MU + k @ (mean_eps - m[0]), k @ cov_eps @ k.T


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize(("predictor", "corrector"), [("reverse_diffusion", "langevin"), ("euler_maruyama", "none")])
def test_pc_sampler_reproduces_gaussian_data(sde, predictor, corrector):
    eps, n = 1e-3, 4000
    g = gen()
    x = pc_sample(gaussian_data_score(sde, MU, COV), sde, start(sde, (n, 2), g, torch.float64), n_steps=100,
                  predictor=predictor, corrector=corrector, t_min=eps, generator=g)
    m, c = gaussian_data_marginal(sde, MU, COV, torch.tensor([eps], dtype=torch.float64))
    mean, cov = denoised_law(sde, m[0], c[0], eps)
    assert_moments(x, mean, cov)


@pytest.mark.parametrize("denoise", [False, True])
def test_pc_sampler_stopped_early_matches_p_eps_or_its_tweedie_law(denoise):
    """Stopping at eps = 0.2, where Tweedie's denoiser visibly shrinks the covariance (to α²S C⁻¹S)."""
    sde, eps, n = VPSDE(), 0.2, 4000
    score = gaussian_data_score(sde, MU, COV)
    g = gen(5)
    x = pc_sample(score, sde, start(sde, (n, 2), g, torch.float64), n_steps=60, t_min=eps, denoise=denoise, generator=g)
    m, c = gaussian_data_marginal(sde, MU, COV, torch.tensor([eps], dtype=torch.float64))
    mean, cov = denoised_law(sde, m[0], c[0], eps) if denoise else (m[0], c[0])
    assert_moments(x, mean, cov)
    g = gen(5)
    x2 = pc_sample(score, sde, start(sde, (n, 2), g, torch.float64), n_steps=60, t_min=eps, denoise=denoise,
                   generator=g)
    assert torch.equal(x, x2)


def test_langevin_corrector_stationary_variance():
    """Corrector only, many steps at a fixed time on isotropic Gaussian data (p_t = N(m, vI)): the step
    ε = 2(snr·E‖z‖/E‖s‖)² with E‖s‖ = √v∞·E‖z‖/v makes ULA's stationary variance v∞ = v/(1 − ε/(2v))
    solve v∞ = v(1 + snr²) (1.25v at snr = 0.5; a step twice as large would give 1.5v)."""
    sde, eps, n, snr, s2 = VPSDE(), 0.5, 10_000, 0.5, 0.3

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = sde.marginal_coefficients(t)
        return -(x - alpha[:, None] * MU) / (alpha**2 * s2 + sigma**2)[:, None]

    g = gen(6)
    x = pc_sample(score, sde, start(sde, (n, 2), g, torch.float64), n_steps=2, predictor="none", snr=snr,
                  n_corrector_steps=100, t_min=eps, denoise=False, generator=g)
    m, c = gaussian_data_marginal(sde, MU, s2 * torch.eye(2, dtype=torch.float64),
                                  torch.tensor([eps], dtype=torch.float64))
    assert_moments(x, m[0], (1 + snr**2) * c[0])


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_ode_sampler_reproduces_gaussian_data(sde):
    """The probability-flow map of Gaussian data is x_eps = m_eps + C_eps^½ C_T^-½ (x_T − m_T); started from the
    prior N(0, p²I) rather than p_T (for VE they differ by O(1/σ_max), DESIGN.md §5) its output law is known."""
    eps, n = 1e-3, 3000
    x, nfe = ode_sample(gaussian_data_score(sde, MU, COV), sde, start(sde, (n, 2), gen(), torch.float64), t_min=eps)
    assert 10 < nfe < 1000
    t = torch.tensor([eps, sde.T], dtype=torch.float64)
    m, c = gaussian_data_marginal(sde, MU, COV, t)
    lam_e, q_e = torch.linalg.eigh(c[0])
    lam_t, q_t = torch.linalg.eigh(c[1])
    flow = (q_e @ torch.diag(lam_e.sqrt()) @ q_e.T) @ (q_t @ torch.diag(lam_t.rsqrt()) @ q_t.T)
    p2 = sde.prior_std() ** 2
    mean, cov = denoised_law(sde, m[0] - flow @ m[1], p2 * flow @ flow.T, eps)
    assert_moments(x, mean, cov)


def test_samplers_on_the_nonaffine_sde_keep_its_stationary_law():
    """With data = the TanhSDE's stationary law, p_t is that law for all t and s = −2 tanh(x/2): the reverse SDE
    must keep it (variance 2(π²/6 − 1)) and the probability-flow drift f − ½g²s vanishes."""
    sde, n = TanhSDE(), 4000

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -2 * torch.tanh(0.5 * x)

    var = sde.prior_std() ** 2
    # logit(Beta(2, 2)) has cumulants κ2 = 2ψ'(2) = 2(π²/6 − 1) and κ4 = 2ψ'''(2) = 2(π⁴/15 − 6)
    kurt = 3 + 2 * (math.pi**4 / 15 - 6) / (2 * (math.pi**2 / 6 - 1)) ** 2
    for predictor in ("reverse_diffusion", "euler_maruyama"):
        g = gen()
        x = pc_sample(score, sde, start(sde, (n, 1), g, torch.float64), n_steps=50, predictor=predictor, generator=g)
        assert abs(x.mean().item()) < Z * math.sqrt(var / n)
        assert abs(x.var().item() - var) < Z * var * math.sqrt((kurt - 1) / n)
    x0 = sde.prior_sample((50, 1), generator=gen(1)).double()
    x, _ = ode_sample(score, sde, x0, denoise=False)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_pc_sample_bad_inputs():
    sde = VPSDE()
    score = gaussian_data_score(sde, MU, COV)
    with pytest.raises(ConfigError, match="predictor"):
        pc_sample(score, sde, torch.zeros(4, 2), n_steps=2, predictor="ancestral")
    with pytest.raises(ConfigError, match="corrector"):
        pc_sample(score, sde, torch.zeros(4, 2), n_steps=2, corrector="ald")
    with pytest.raises(ConfigError, match="both"):
        pc_sample(score, sde, torch.zeros(4, 2), n_steps=2, predictor="none", corrector="none")
    with pytest.raises(ConfigError, match="t_min"):
        pc_sample(score, sde, torch.zeros(4, 2), n_steps=2, t_min=1.5)
    with pytest.raises(ConfigError, match="method"):
        ode_sample(score, sde, torch.zeros(4, 2), method="rk4")


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_noise_conditional_score_of_an_affine_sde(sde):
    """For N(μ, S) data the data smoothed by N(0, ς²I) has the score −(S + ς²I)⁻¹(y − μ), for every SDE."""
    conditional = noise_conditional_score(gaussian_data_score(sde, MU, COV), sde)
    y = torch.randn(6, 2, generator=gen(), dtype=torch.float64)
    levels = noise_level(sde, torch.tensor([0.01, 0.3, 0.3, 0.7, 0.7, 0.9], dtype=torch.float64))
    expected = -torch.linalg.solve(COV + levels[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64),
                                   (y - MU).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(conditional(y, levels), expected, rtol=1e-7, atol=1e-9)
    with pytest.raises(ConfigError, match="marginal"):
        noise_conditional_score(lambda x, t: -x, TanhSDE())
