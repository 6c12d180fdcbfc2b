"""k-NN precision / recall, density / coverage and the 2-D histogram distance (lcssm.metrics.structure), on cases
with known
answers and against a brute-force re-computation; and that they tell a blob from two spirals, which energy distance
at its floor could not."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lcssm.data.toy import get_toy
from lcssm.device import make_generator
from lcssm.errors import DataError
from lcssm.experiments.points import sample_quality
from lcssm.metrics.structure import density_coverage, histogram_distance, knn_precision_recall, outside_fraction


def _brute(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float, float, float]:
    """Kynkäänniemi et al. 2019 Eq. 1-3 and Naeem et al. 2020 Eq. 3-4, written out with explicit loops."""
    def radius(points, i):
        d = sorted(math.dist(points[i], points[j]) for j in range(len(points)) if j != i)
        return d[k - 1]

    r_real = [radius(real.tolist(), i) for i in range(len(real))]
    r_fake = [radius(fake.tolist(), j) for j in range(len(fake))]
    inside = [[math.dist(f, r) <= r_real[i] for i, r in enumerate(real.tolist())] for f in fake.tolist()]
    precision = sum(any(row) for row in inside) / len(fake)
    recall = sum(any(math.dist(r, f) <= r_fake[j] for j, f in enumerate(fake.tolist())) for r in real.tolist())
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = sum(any(inside[j][i] for j in range(len(fake))) for i in range(len(real))) / len(real)
    return precision, recall / len(real), density, coverage


@pytest.mark.parametrize("k", [1, 3, 5])
def test_metrics_equal_their_definitions_written_out(k):
    g = make_generator(0)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = 0.7 * torch.randn(30, 3, generator=g, dtype=torch.float64) + 0.4
    want = _brute(real, fake, k)
    got = (*knn_precision_recall(real, fake, k=k), *density_coverage(real, fake, k=k))
    assert got == pytest.approx(want, abs=1e-12)


def test_known_answers():
    g = make_generator(1)
    real = torch.randn(500, 2, generator=g)
    assert knn_precision_recall(real, real, k=5) == (1.0, 1.0)
    density, coverage = density_coverage(real, real, k=5)
    assert coverage == 1.0 and density >= 1.0  # every point lies in its own ball and in its neighbours'
    far = real + 1000.0
    assert knn_precision_recall(real, far, k=5) == (0.0, 0.0)
    assert density_coverage(real, far, k=5) == (0.0, 0.0)
    assert histogram_distance(real, far) == pytest.approx(1.0)
    assert histogram_distance(real, real) == 0.0


def test_half_of_the_support_has_full_precision_and_half_recall():
    g = make_generator(2)
    real, other = torch.rand(3000, 2, generator=g), torch.rand(6000, 2, generator=g)
    half = other[other[:, 0] < 0.5][:1500]
    precision, recall = knn_precision_recall(real, half, k=5)
    density, coverage = density_coverage(real, half, k=5)
    assert precision > 0.97 and abs(recall - 0.5) < 0.05
    assert abs(coverage - 0.5) < 0.05 and density > 0.9


def test_histogram_distance_by_hand():
    a = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    b = torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9], [5.0, 5.0]], dtype=torch.float64)
    # 2x2 cells over the unit square: p = (1/4 each), q = (1/2, 0, 1/4, 0) and 1/4 outside
    tv = histogram_distance(a, b, bins=2, bounds=(0.0, 1.0, 0.0, 1.0))
    assert tv == pytest.approx(0.5 * (0.25 + 0.25 + 0.0 + 0.25 + 0.25))


def test_bad_inputs():
    x = torch.randn(10, 2)
    for k in (0, 10, 2.5):
        with pytest.raises(DataError, match="k must be an integer"):
            knn_precision_recall(x, x, k=k)
    with pytest.raises(DataError, match="non-finite"):
        density_coverage(x, torch.full((5, 2), math.nan))
    with pytest.raises(DataError, match="2-D points"):
        histogram_distance(torch.randn(5, 3), torch.randn(5, 3))


def test_outside_fraction_by_hand():
    """Box of the real points [0, 1] x [0, 2], widened by 0.25 of its extent: x in [-0.25, 1.25], y in [-0.5, 2.5]."""
    real = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, 1.0]])
    fake = torch.tensor([[-0.2, 2.4], [1.3, 1.0], [0.5, -0.6], [1.2, 2.5], [40.0, 40.0]])
    assert outside_fraction(real, fake) == pytest.approx(3 / 5)
    assert outside_fraction(real, fake, margin=0.0) == 1.0  # every fake point leaves the unwidened box
    assert outside_fraction(real, real, margin=0.0) == 0.0
    with pytest.raises(DataError, match="same dimension"):
        outside_fraction(real, torch.zeros(4, 3))


def test_far_strays_cost_precision_little_but_the_outside_fraction_sees_them():
    """Five samples in 2,000 at 20x the data's radius: the failure of the probability-flow ODE runs."""
    spirals = get_toy("2spirals")
    real = spirals(2000, make_generator(3))
    strays = real.clone()
    strays[:5] = 80.0
    good, bad = sample_quality(real, spirals, seed=0), sample_quality(strays, spirals, seed=0)
    assert good["outside"] == 0.0 and good["outside_floor"] == 0.0
    assert bad["outside"] == pytest.approx(5 / 2000)
    assert good["precision"] - bad["precision"] < 0.005


def test_a_blob_scores_clearly_worse_than_real_samples_of_two_spirals():
    """The failure the energy distance missed: a Gaussian with the spirals' mean and covariance."""
    spirals = get_toy("2spirals")
    real = spirals(2000, make_generator(3))
    blob = real.mean(0) + torch.randn(2000, 2, generator=make_generator(4)) @ torch.linalg.cholesky(real.T.cov()).T
    good = sample_quality(real, spirals, seed=0)
    bad = sample_quality(blob, spirals, seed=0)
    for q in (good, bad):
        assert q["knn_k"] == 5 and q["knn_points"] == 2000
    assert abs(good["precision"] - good["precision_floor"]) < 0.03 and abs(good["recall"] - good["recall_floor"]) < 0.03
    assert bad["precision"] < good["precision_floor"] - 0.2 and bad["density"] < 0.6 and bad["coverage"] < 0.85
    assert bad["hist_tv"] > good["hist_tv_floor"] + 0.15
    assert all(v > 0 for v in bad["hist_bin_width"])


def test_every_point_run_records_the_structure_metrics(tmp_path):
    from lcssm.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "moons", "--steps", "10", "--batch-size", "64", "--hidden", "16",
                 "--n-samples", "300", "--n-steps", "5", "--out", str(out), "--no-progress"]) == 0
    import json

    record = json.loads((out / "metrics.json").read_text())["sample"][-1]
    for key, floor in itertools.product(("precision", "recall", "density", "coverage", "hist_tv", "outside"),
                                        ("", "_floor")):
        assert math.isfinite(record[key + floor]), key + floor
