"""Training-time distributions (lcssm.diffusion.sample_times) and the closed-form inverse of the noise level."""

from __future__ import annotations

import math

import pytest
import torch

from lcssm.diffusion import sample_times
from lcssm.errors import ConfigError
from lcssm.experiments.presets import point_spec
from lcssm.noise_levels import level_of, time_of, time_of_by_root
from lcssm.sde import get_sde

AFFINE = ("ve", "vp", "subvp")


def _ks(sample: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov statistic of a 1-D sample against a cdf."""
    x, _ = sample.double().sort()
    n = len(x)
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


@pytest.mark.parametrize("name", AFFINE)
def test_closed_form_inverse_equals_root_finding(name):
    sde = get_sde(name)
    levels = torch.logspace(-4, 4, 401, dtype=torch.float64)
    closed, root = time_of(sde, levels), time_of_by_root(sde, levels)
    assert torch.allclose(closed, root, rtol=1e-12, atol=1e-15)
    t = torch.linspace(1e-4, 1.0, 257, dtype=torch.float64)
    assert torch.allclose(time_of(sde, level_of(sde, t)), t, rtol=1e-10, atol=0)
    # levels outside [ς_{T·1e-12}, ς_T] go to the end times, as the root finder sends them
    ends = torch.tensor([0.0, 1e-320, 1e200, math.inf], dtype=torch.float64)
    assert torch.allclose(time_of(sde, ends), time_of_by_root(sde, ends), rtol=1e-12, atol=0)


def test_uniform_is_the_score_sde_draw():
    sde = get_sde("vp")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = 1e-5 + (1 - 1e-5) * torch.rand(64, generator=g1)
    assert torch.equal(sample_times(sde, 64, t_min=1e-5, generator=g2), expected)


@pytest.mark.parametrize("name", AFFINE)
def test_log_level_is_log_uniform_in_the_noise_level(name):
    sde, n, t_min = get_sde(name), 20_000, 1e-3
    t = sample_times(sde, n, kind="log_level", t_min=t_min, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)
    assert t.min() >= t_min and t.max() <= sde.T
    lo, hi = level_of(sde, torch.tensor([t_min, sde.T])).log().tolist()
    stat = _ks(level_of(sde, t).log(), lambda v: ((v - lo) / (hi - lo)).clamp(0, 1))
    assert stat < 1.63 / math.sqrt(n)  # the 1 % critical value


@pytest.mark.parametrize("name", AFFINE)
def test_lognormal_is_edm_clamped_to_the_time_range(name):
    sde, n, t_min = get_sde(name), 20_000, 1e-3
    t = sample_times(sde, n, kind="lognormal", t_min=t_min, p_mean=-0.5, p_std=0.8,
                     generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = level_of(sde, torch.tensor([t_min, sde.T])).log().tolist()
    normal = torch.distributions.Normal(-0.5, 0.8)
    # clamping puts the mass below / above the range at its ends: the cdf of the clamped variable
    stat = _ks(level_of(sde, t).log(), lambda v: torch.where(v >= hi - 1e-9, torch.ones_like(v), normal.cdf(v)))
    assert stat < 1.63 / math.sqrt(n)
    assert (t == t_min).float().mean() == pytest.approx(float(normal.cdf(torch.tensor(lo))), abs=0.01)


def test_mixed_alternates_the_two():
    sde, n = get_sde("vp"), 20_000
    t = sample_times(sde, n, kind="mixed", t_min=1e-3, generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64)
    lo, hi = level_of(sde, torch.tensor([1e-3, sde.T])).log().tolist()
    even = level_of(sde, t[0::2]).log()
    assert _ks(even, lambda v: ((v - lo) / (hi - lo)).clamp(0, 1)) < 1.63 / math.sqrt(n // 2)
    odd = level_of(sde, t[1::2]).log()
    assert float(odd.median()) == pytest.approx(-1.2, abs=0.05)  # EDM's P_mean


def test_non_affine_sde_without_a_table_takes_only_uniform():
    sde = get_sde("tanh")
    assert sample_times(sde, 8, kind="uniform", t_min=1e-3).shape == (8,)
    with pytest.raises(ConfigError, match="use uniform"):
        sample_times(sde, 8, kind="mixed", t_min=1e-3)
    with pytest.raises(ConfigError, match="time sampling"):
        sample_times(get_sde("vp"), 8, kind="beta", t_min=1e-3)


def test_point_spec_fits_its_sde():
    tanh = point_spec("tanh")  # its noise levels come from its table, measured when the run is created
    assert (tanh.objective.time_sampling, tanh.objective.center, tanh.sampler.name, tanh.model.c_out) == (
        "mixed", "local", "pf_heun", "stationary_skip")
    vp = point_spec()
    assert (vp.objective.time_sampling, vp.sampler.name, vp.model.arch) == ("mixed", "heun", "res_mlp")


# --- Metropolis-adjusted Langevin ----------------------------------------------------------------------------
def test_mala_is_exact_where_unadjusted_langevin_is_biased():
    from lcssm.sampling.langevin import langevin, mala

    def log_density(x):
        return -0.5 * (x**2).sum(1)

    def score(x):
        return -x

    step, x0 = 0.8, torch.zeros(20_000, 2)
    ula = langevin(score, x0, step_size=step, n_steps=100, generator=torch.Generator().manual_seed(0))
    exact, rate = mala(log_density, x0, step_size=step, n_steps=100, generator=torch.Generator().manual_seed(0))
    # ULA on N(0, I) is the AR(1) chain x <- (1 - e/2)x + sqrt(e)z: stationary variance 1/(1 - e/4) = 1.25
    assert float(ula.var(0).mean()) == pytest.approx(1 / (1 - step / 4), rel=0.02)
    assert float(exact.var(0).mean()) == pytest.approx(1.0, rel=0.02)
    assert 0.5 < rate < 1.0


def test_mala_through_a_toy_run_records_its_acceptance_rate(tmp_path):
    from lcssm.config import apply_overrides
    from lcssm.experiments.pipeline import sample_run, train_run
    from lcssm.experiments.presets import toy_spec

    spec = apply_overrides(toy_spec(), ["model.hidden=16", "train.steps=2", "train.batch_size=32",
                                        "sampler.n_samples=64", "sampler.langevin_steps=5"])
    assert spec.sampler.name == "mala"
    record = train_run(spec, tmp_path / "toy", progress=False)["sample"]
    assert 0 <= record["acceptance_rate"] <= 1 and record["nfe"] == 6
    with pytest.raises(ConfigError, match="does not apply"):
        sample_run(tmp_path / "toy", {"name": "heun"}, device="cpu")
