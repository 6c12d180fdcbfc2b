"""Toy data, the checkerboard's closed forms, point files and the toy models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcssm.data.toy import (
    TOY_DATASETS,
    checkerboard,
    checkerboard_in_support,
    checkerboard_in_support_ceiling,
    checkerboard_logpdf,
    get_toy,
    load_points,
)
from lcssm.errors import ConfigError, DataError
from lcssm.models import EnergyMLP, ScoreMLP


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_toy_samplers_shape_and_reproducibility(name):
    a = get_toy(name)(1000, torch.Generator().manual_seed(0))
    b = get_toy(name)(1000, torch.Generator().manual_seed(0))
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert a.abs().max() < (1000 if name == "student3" else 6)  # student3 has power-law tails


def test_the_heavy_tailed_set_and_its_control():
    """student3: 0.5 x Student-t(3) coordinates (median |x| = 0.5 x 0.7649, variance 0.75); gaussian: N(0, 0.75 I)."""
    from scipy import stats

    x = get_toy("student3")(200_000, torch.Generator().manual_seed(1)).double()
    assert float(x.abs().median()) == pytest.approx(0.5 * stats.t(3).ppf(0.75), rel=0.01)
    assert stats.kstest(x[:20_000, 0].numpy() / 0.5, stats.t(3).cdf).pvalue > 1e-3
    g = get_toy("gaussian")(200_000, torch.Generator().manual_seed(2)).double()
    assert float(g.var(0).mean()) == pytest.approx(0.75, rel=0.01)


def test_checkerboard_is_uniform_on_its_support():
    x = checkerboard(80_000, torch.Generator().manual_seed(0))
    assert checkerboard_in_support(x).all()
    cells = (torch.floor(x[:, 0] / 2) * 4 + torch.floor(x[:, 1] / 2)).long()
    counts = torch.bincount(cells - cells.min()).float()
    counts = counts[counts > 0]
    assert len(counts) == 8
    assert (counts - 10_000).abs().max() < 5 * 10_000**0.5  # each square 1/8 of the mass


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.3])
def test_in_support_ceiling_matches_monte_carlo(sigma):
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = checkerboard(n, g) + sigma * torch.randn(n, 2, generator=g)
    frac = checkerboard_in_support(x).float().mean().item()
    ceiling = checkerboard_in_support_ceiling(sigma)
    assert abs(frac - ceiling) < 4 * (ceiling * (1 - ceiling) / n) ** 0.5


def test_smoothed_checkerboard_density_normalises_and_matches_histogram():
    sigma = 0.3
    grid = torch.linspace(-6, 6, 241, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    p = checkerboard_logpdf(pts, sigma).exp()
    cell = (grid[1] - grid[0]) ** 2
    assert abs(p.sum().item() * cell - 1) < 1e-3
    # the density at a point equals a kernel-free Monte-Carlo estimate of P(x+σn in a small box)/area
    g = torch.Generator().manual_seed(2)
    x = checkerboard(400_000, g).double() + sigma * torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    center = torch.tensor([1.0, 1.0], dtype=torch.float64)  # on the edge between squares
    h = 0.2
    frac = ((x - center).abs() < h / 2).all(1).double().mean().item()
    want = checkerboard_logpdf(center[None], sigma).exp().item() * h * h
    assert abs(frac - want) < 4 * (want / 400_000) ** 0.5 + 1e-4


def test_energy_model_score_is_gradient_of_f():
    torch.manual_seed(0)
    model = EnergyMLP(dim=2).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    h = 1e-6
    fd = torch.stack([(model.log_density(x + h * e) - model.log_density(x - h * e)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(model(x), fd, rtol=1e-6, atol=1e-8)


def test_energy_score_keeps_graph_only_when_training():
    model = EnergyMLP(dim=2)
    x = torch.randn(4, 2)
    assert model(x).requires_grad
    with torch.no_grad():
        assert not model(x).requires_grad


def test_toy_models_share_the_backbone_call():
    """``backbone(x, t, sigma)``: the energy MLP and an unconditional score MLP use neither t nor sigma."""
    x, t, sigma = torch.randn(4, 2), torch.rand(4), torch.rand(4) + 0.1
    for model in (EnergyMLP(dim=2), ScoreMLP(dim=2)):
        torch.testing.assert_close(model(x, t, sigma), model(x))
        torch.testing.assert_close(model(x, t), model(x))


def test_score_mlp_time_conditional():
    m = ScoreMLP(dim=3, time_embed="fourier")
    x = torch.randn(4, 3)
    a, b = m(x, torch.zeros(4)), m(x, torch.ones(4))
    assert a.shape == (4, 3) and not torch.allclose(a, b)
    torch.testing.assert_close(m(x, torch.ones(4), torch.full((4,), 0.3)), b)  # sigma unused
    with pytest.raises(ValueError, match="model\\(x, t\\)"):
        m(x)
    with pytest.raises(ConfigError, match="fourier, sinusoidal"):
        ScoreMLP(time_embed="learned")
    with pytest.raises(ConfigError, match="activation"):
        EnergyMLP(activation="relu6")


def test_load_points_npy_and_csv(tmp_path):
    arr = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float64)
    np.save(tmp_path / "p.npy", arr)
    np.savetxt(tmp_path / "p.csv", arr, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "q.csv", arr, delimiter=",")
    for name in ("p.npy", "p.csv", "q.csv"):
        pts = load_points(tmp_path / name)
        assert pts.shape == (10, 3) and pts.dtype == torch.float32
        np.testing.assert_allclose(pts.numpy(), arr, rtol=1e-6)
    np.save(tmp_path / "one.npy", arr[:, 0])
    assert load_points(tmp_path / "one.npy").shape == (10, 1)


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    ("1,2\n3,x\n", "could not be read"),
    ("1,2\n3\n", "could not be read"),
    ("", "empty"),
    ("1,2\n", "at least 2"),
    ("1,nan\n2,3\n", "NaN"),
])
def test_load_points_errors(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError, match=match):
        load_points(p)


def test_load_points_other_errors(tmp_path):
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported extension"):
        load_points(tmp_path / "x.txt")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match="shape"):
        load_points(tmp_path / "cube.npy")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(DataError, match="could not be read"):
        load_points(tmp_path / "trunc.npy")
    with pytest.raises(DataError, match="directory"):
        load_points(tmp_path)
    with pytest.raises(DataError, match="valid: checkerboard"):
        get_toy("checkers")
