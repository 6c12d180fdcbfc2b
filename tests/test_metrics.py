"""Tests of lcssm.metrics against brute-force computations, closed forms and unbiasedness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import norm

from lcssm.device import make_generator
from lcssm.errors import DataError
from lcssm.metrics import distances as metrics
from lcssm.metrics.distances import (
    energy_distance,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid,
    median_bandwidth,
    mmd_rbf,
    trace_sqrt_product,
)

# ------------------------------------------------------------------ brute-force references (numpy)


def brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    dxx, dyy = cdist(x, x), cdist(y, y)
    return 2 * cdist(x, y).mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))


def brute_mmd_rbf(x: np.ndarray, y: np.ndarray, bws: list[float]) -> float:
    def k(a, b):
        d2 = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-d2 / (2 * s * s)) for s in bws)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).mean()
    )


def brute_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = len(x)
    kxx, kyy = k(x, x), k(y, y)
    off = m * (m - 1)
    return (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * k(x, y).mean()


def mean_abs_diff_normal(mu: float, s: float) -> float:
    """E|D| for D ~ N(mu, s^2) (folded normal mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * norm.cdf(-mu / s))


def assert_mean_zero(values: list[float], n_se: float = 4.0) -> None:
    """The sample mean of i.i.d. ``values`` is within ``n_se`` standard errors of 0."""
    v = np.asarray(values)
    se = v.std(ddof=1) / math.sqrt(len(v))
    assert abs(v.mean()) < n_se * se, (v.mean(), se)


# ------------------------------------------------------------------ energy distance


@pytest.mark.parametrize("chunk_elements", [2**22, 97])  # one block / many ragged row chunks
def test_energy_distance_matches_brute_force(monkeypatch, chunk_elements):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5] + 10.0  # offset tests the centring
    y = rng.standard_t(df=3, size=(45, 3)) + 10.5
    ref = brute_energy(x, y)
    assert energy_distance(x, y, max_points=None) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    # torch float32 input: statistics are accumulated in float64 from the float32 values
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    ref32 = brute_energy(xt.double().numpy(), yt.double().numpy())
    assert energy_distance(xt, yt) == pytest.approx(ref32, rel=1e-10, abs=1e-12)


def test_energy_distance_unbiased_for_same_distribution():
    g = make_generator(1)
    vals = [energy_distance(torch.randn(80, 2, generator=g), torch.randn(60, 2, generator=g)) for _ in range(200)]
    assert_mean_zero(vals)


def test_energy_distance_shifted_gaussians_closed_form():
    # X ~ N(0, 1), Y ~ N(1, 1.5^2): E|X-Y| = E|N(-1, 3.25)|, E|X-X'| = 2 s / sqrt(pi).
    m1, s1, m2, s2 = 0.0, 1.0, 1.0, 1.5
    truth = (
        2 * mean_abs_diff_normal(m1 - m2, math.hypot(s1, s2))
        - 2 * s1 / math.sqrt(math.pi)
        - 2 * s2 / math.sqrt(math.pi)
    )
    g = make_generator(2)
    vals = []
    for _ in range(20):
        x = m1 + s1 * torch.randn(400, 1, generator=g, dtype=torch.float64)
        y = m2 + s2 * torch.randn(400, 1, generator=g, dtype=torch.float64)
        vals.append(energy_distance(x, y))
    v = np.asarray(vals)
    assert (v > 0).all()
    assert abs(v.mean() - truth) < 4 * v.std(ddof=1) / math.sqrt(len(v)), (v.mean(), truth)


def test_energy_distance_subsampling_reproducible_and_bounded():
    g = make_generator(3)
    x, y = torch.randn(3000, 2, generator=g), torch.randn(2500, 2, generator=g) + 0.3
    a = energy_distance(x, y, max_points=500, generator=make_generator(7))
    b = energy_distance(x, y, max_points=500, generator=make_generator(7))
    c = energy_distance(x, y, max_points=500, generator=make_generator(8))
    assert a == b and a != c
    assert energy_distance(x, y, max_points=500) == energy_distance(x, y, max_points=500)  # None = seed 0


def test_energy_distance_rejects_bad_input():
    with pytest.raises(DataError, match="dimension"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(DataError, match="2-D"):
        energy_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(DataError, match="NaN"):
        energy_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(DataError, match="at least 2"):
        energy_distance(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(DataError, match="max_points"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 2)), max_points=1)


# ------------------------------------------------------------------ MMD (RBF)


def test_mmd_rbf_matches_brute_force(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + 0.4
    bws = [0.7, 2.0]
    assert mmd_rbf(x, y, bandwidths=bws) == pytest.approx(brute_mmd_rbf(x, y, bws), rel=1e-10)
    med = np.median(pdist(np.concatenate([x, y])))
    assert median_bandwidth(x, y) == pytest.approx(med, rel=1e-12)
    ref = brute_mmd_rbf(x, y, [0.5 * med, med, 2 * med])
    assert mmd_rbf(x, y) == pytest.approx(ref, rel=1e-10)


def test_mmd_rbf_unbiased_for_same_distribution():
    g = make_generator(5)
    vals = [mmd_rbf(torch.randn(50, 3, generator=g), torch.randn(40, 3, generator=g)) for _ in range(200)]
    assert_mean_zero(vals)


def test_mmd_rbf_rejects_bad_bandwidth():
    with pytest.raises(DataError, match="bandwidths"):
        mmd_rbf(np.zeros((4, 2)), np.ones((4, 2)), bandwidths=[1.0, 0.0])


# ------------------------------------------------------------------ Fréchet distance


def random_spd(rng: np.random.Generator, d: int, cond: float = 100.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def test_frechet_identical_features_is_zero():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    mu, sigma = feature_statistics(f)
    # Full-rank S: eigensolvers are backward stable, so each term carries ~d * eps * ||S|| error.
    tol = 100 * 32 * np.finfo(np.float64).eps * np.trace(sigma)
    assert abs(fid_from_features(f, f)) < tol
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < tol


def test_frechet_closed_form_commuting_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr term = sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(7)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(truth, rel=1e-10)
    # 1-D: W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)


def test_trace_sqrt_product_matches_scipy_sqrtm():
    rng = np.random.default_rng(8)
    s1, s2 = random_spd(rng, 12), random_spd(rng, 12, cond=1e3)
    ref_product = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real  # pytorch-fid's form
    r = scipy.linalg.sqrtm(s1).real
    ref_sym = np.trace(scipy.linalg.sqrtm(r @ s2 @ r)).real
    got = trace_sqrt_product(s1, s2)
    assert got == pytest.approx(ref_product, rel=1e-8)
    assert got == pytest.approx(ref_sym, rel=1e-8)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * ref_product, rel=1e-8)


def test_feature_statistics_and_validation():
    rng = np.random.default_rng(9)
    f = rng.normal(size=(50, 3))
    mu, sigma = feature_statistics(torch.from_numpy(f).float())
    f32 = f.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f32.T), rtol=1e-12)
    assert mu.dtype == sigma.dtype == np.float64
    with pytest.raises(DataError, match="shape"):
        frechet_distance(mu, sigma, mu, np.eye(2))
    with pytest.raises(DataError, match="dimension"):
        fid_from_features(f, f[:, :2])
    with pytest.raises(DataError, match="at least 2"):
        feature_statistics(f[:1])


# ------------------------------------------------------------------ KID


def test_kid_matches_brute_force_with_zero_spread_when_subset_is_whole_set():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) * 1.2 + 0.1
    with pytest.warns(UserWarning, match="subset_size 1000 exceeds the rows"):
        mean, std = kid(x, y, n_subsets=3, subset_size=1000)  # clipped to 40 = every row, in some order
    assert mean == pytest.approx(brute_poly_mmd(x, y), rel=1e-10)
    assert std == 0.0  # every subset is the whole of both sets: no spread, not float noise


def test_kid_unbiased_for_same_distribution():
    g = make_generator(11)
    vals = []
    for _ in range(150):
        f1, f2 = torch.randn(60, 16, generator=g), torch.randn(90, 16, generator=g)
        vals.append(kid(f1, f2, n_subsets=1, subset_size=60, generator=g)[0])
    assert_mean_zero(vals)


def test_kid_clips_subset_size_and_is_reproducible():
    g = make_generator(12)
    f1, f2 = torch.randn(30, 4, generator=g), torch.randn(80, 4, generator=g) + 1.0
    with pytest.warns(UserWarning, match="exceeds the rows"):
        a = kid(f1, f2, n_subsets=5, subset_size=1000, generator=make_generator(0))
    with pytest.warns(UserWarning, match="exceeds the rows"):
        assert a == kid(f1, f2, n_subsets=5, subset_size=1000)
    assert a[0] > 0 and a[1] > 0  # shifted: clearly positive; 30-of-80 subsets differ
    with pytest.raises(DataError, match="n_subsets"):
        kid(f1, f2, n_subsets=0)


# ------------------------------------------------------------------ Inception Score


def test_inception_score_extremes():
    c, n_splits = 10, 5
    labels = np.tile(np.arange(c), 20)  # each split of 40 rows holds every class 4 times
    one_hot = np.eye(c)[labels]
    mean, std = inception_score(one_hot, n_splits=n_splits)
    assert mean == pytest.approx(c, rel=1e-12) and std < 1e-12
    p = np.random.default_rng(13).dirichlet(np.ones(c))
    mean, std = inception_score(np.tile(p, (100, 1)), n_splits=n_splits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std < 1e-12


def test_inception_score_matches_definition():
    rng = np.random.default_rng(14)
    p = rng.dirichlet(np.full(7, 0.3), size=90)
    py = p.mean(0)
    ref = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
    mean, std = inception_score(torch.from_numpy(p), n_splits=1)
    assert mean == pytest.approx(ref, rel=1e-12) and std == 0.0
    assert 1.0 <= inception_score(p, n_splits=3)[0] <= 7.0


def test_inception_score_rejects_bad_input():
    with pytest.raises(DataError, match="sum"):
        inception_score(np.full((10, 3), 0.5))
    with pytest.raises(DataError, match="n_splits"):
        inception_score(np.full((4, 2), 0.5), n_splits=5)
