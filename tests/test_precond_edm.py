"""EDM's preconditioning in ScoreModel (``c_in = c_out = "edm"``), the ``edm`` loss weighting and ``--precond edm``.

Checked against the denoiser form of Karras et al. (2022, Table 1) recomputed independently in the
σ-parametrisation y = x/α_t, ς_t = σ_t/α_t; against the exact score of Gaussian data; and by the property the
weighting exists for: the network's regression target has unit variance at every noise level for data of second
moment σ_data².
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lcssm.diffusion import diffusion_loss
from lcssm.errors import ConfigError
from lcssm.models.precond import ScoreModel
from lcssm.sde import VESDE, VPSDE, SubVPSDE

SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]


class Recorder(nn.Module):
    """A backbone returning ``F(x_in) = w·x_in`` (or 0) and keeping the input it saw."""

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x, t, sigma):
        self.seen = x
        return self.weight * x


def _edm_denoiser_score(x, F, alpha, sigma, sd):
    """(α D − x)/σ² with D(y; ς) = c_skip y + c_out F, EDM's Table 1 coefficients in ς = σ/α, y = x/α."""
    a, s = alpha[:, None], sigma[:, None]
    y, vs = x / a, s / a
    c_skip = sd**2 / (vs**2 + sd**2)
    c_out = vs * sd / torch.sqrt(vs**2 + sd**2)
    return (a * (c_skip * y + c_out * F) - x) / s**2


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("sd", [0.5, 1.0, 2.0])
def test_edm_score_is_the_denoiser_form_of_the_edm_paper(sde, sd):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64) * 3
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    backbone = Recorder(weight=0.7)
    model = ScoreModel(backbone, sde, c_in="edm", c_out="edm", sigma_data=sd)
    score = model(x, t)
    alpha, sigma = sde.marginal_coefficients(t)
    c_in = 1 / torch.sqrt((sigma / alpha) ** 2 + sd**2)  # EDM's c_in applied to y = x/α
    torch.testing.assert_close(backbone.seen, c_in[:, None] * x / alpha[:, None], rtol=1e-12, atol=0)
    F = 0.7 * backbone.seen
    torch.testing.assert_close(score, _edm_denoiser_score(x, F, alpha, sigma, sd), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_skip_alone_is_the_exact_score_of_gaussian_data_with_that_scale(sde):
    """F = 0 leaves c_skip: for data N(0, σ_d² I) that is the exact score −x/(σ_t² + α_t² σ_d²) at every t."""
    sd = 0.6
    x = torch.randn(32, 2, dtype=torch.float64)
    t = torch.linspace(0.02, 0.98, 32, dtype=torch.float64)
    score = ScoreModel(Recorder(0.0), sde, c_in="edm", c_out="edm", sigma_data=sd)(x, t)
    alpha, sigma = sde.marginal_coefficients(t)
    torch.testing.assert_close(score, -x / (sigma**2 + alpha**2 * sd**2)[:, None], rtol=1e-12, atol=0)


def test_edm_input_scaling_with_unit_sigma_data_is_unit_variance():
    sde, x, t = VPSDE(), torch.randn(8, 4, dtype=torch.float64), torch.full((8,), 0.3, dtype=torch.float64)
    a, b = Recorder(), Recorder()
    ScoreModel(a, sde, c_in="edm", sigma_data=1.0)(x, t)
    ScoreModel(b, sde, c_in="unit_variance")(x, t)
    torch.testing.assert_close(a.seen, b.seen, rtol=1e-15, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_weighting_makes_the_target_unit_variance_at_every_noise_level(sde):
    """DSM with F ≡ 0 under the edm preconditioning: the weighted loss is ½ E‖F_target‖², which is d/2 at every
    t for data of second moment σ_d² (here ±σ_d, not Gaussian); the sigma2 weighting is not flat there."""
    sd, n, d = 0.5, 40_000, 2
    g = torch.Generator().manual_seed(1)
    x0 = sd * (2 * torch.randint(0, 2, (n, d), generator=g, dtype=torch.float64) - 1)
    model = ScoreModel(Recorder(0.0), sde, c_in="edm", c_out="edm", sigma_data=sd)
    edm, plain = [], []
    for t0 in (0.02, 0.2, 0.5, 0.9):
        t = torch.full((n,), t0, dtype=torch.float64)
        edm.append(float(diffusion_loss(model, sde, x0, objective="dsm", weighting="edm", sigma_data=sd, t=t,
                                        generator=g).mean()))
        plain.append(float(diffusion_loss(model, sde, x0, objective="dsm", weighting="sigma2", t=t,
                                          generator=g).mean()))
    tol = 4 * math.sqrt(2 * d / n)  # Monte Carlo: ½‖F‖² of d unit-variance coordinates
    assert all(abs(v - d / 2) < tol for v in edm), edm
    assert max(plain) - min(plain) > 10 * tol, plain


def test_edm_refuses_a_network_that_divides_by_sigma_and_a_bad_sigma_data():
    from lcssm.models.build import build_model

    with pytest.raises(ConfigError, match="divides its output by sigma"):
        ScoreModel(build_model("ncsnv2_cifar10", nf=8, image_size=16), VESDE(), c_in="edm", c_out="edm")
    with pytest.raises(ConfigError, match="sigma_data"):
        ScoreModel(Recorder(), VPSDE(), c_out="edm", sigma_data=0.0)
    with pytest.raises(ConfigError, match="sigma_data"):
        diffusion_loss(Recorder(), VPSDE(), torch.zeros(4, 2), objective="dsm", weighting="edm", sigma_data=-1.0)


def test_precond_edm_on_a_preset_measures_sigma_data_and_keeps_it(tmp_path):
    from lcssm.cli import main
    from lcssm.experiments.images import ImagesKind
    from lcssm.experiments.pipeline import open_run

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--precond", "edm", "--steps", "3", "--batch-size", "8",
                 "--n-samples", "0", "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    kind = ImagesKind()
    spec = open_run(out, "cpu").spec
    data = kind.load(spec)
    expected = float((data.as_float(spec.data.scale).double() ** 2).mean().sqrt())
    assert saved["model"]["sigma_data"] == pytest.approx(expected, rel=1e-12)
    assert (saved["model"]["c_in"], saved["model"]["c_out"]) == ("edm", "edm")
    assert saved["model"]["config"]["scale_by_sigma"] is False
    assert (saved["objective"]["weighting"], saved["objective"]["time_sampling"]) == ("edm", "lognormal")
    assert open_run(out, "cpu").model.sigma_data == saved["model"]["sigma_data"]


def test_paper_presets_stay_score_sde_unless_asked():
    from lcssm.experiments.presets import ImagePreset, image_spec

    spec = image_spec(ImagePreset(preset="ncsnpp_deep_cifar10"), "mnist")
    assert (spec.model.c_in, spec.model.c_out, spec.model.sigma_data) == ("none", "none", None)
    assert spec.objective.weighting == "sigma2" and spec.objective.time_sampling == "uniform"
    with pytest.raises(ConfigError, match="U-Net"):
        image_spec(ImagePreset(preset="ncsnv2_cifar10", precond="edm"), "mnist")


@pytest.mark.parametrize("name", ["digits", "mnist", "tiny"])
def test_lcssms_own_presets_default_to_edm_and_keep_score_sde_by_one_option(name):
    """lcssm's CPU presets train with EDM's parametrisation by default (docs/DIGITS.md: Heun-35 digits-FID 4.62
    against 30.19 at 4,000 steps); ``--precond score_sde`` gives the preset as it was."""
    from lcssm.experiments.presets import ImagePreset, image_spec
    from lcssm.models import get_preset

    default, old = image_spec(ImagePreset(preset=name)), image_spec(ImagePreset(preset=name, precond="score_sde"))
    assert (default.model.c_in, default.model.c_out, default.objective.weighting) == ("edm", "edm", "edm")
    assert default.objective.time_sampling == "lognormal" and default.model.config["scale_by_sigma"] is False
    p = get_preset(name)
    assert (old.model.c_in, old.model.c_out) == ("none", p.c_out) and old.objective.weighting == p.training["weighting"]
    assert old.objective.time_sampling == "uniform"
    assert old.model.config["scale_by_sigma"] == p.model.scale_by_sigma
