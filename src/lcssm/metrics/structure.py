"""Sample-quality metrics that see structure, not only moments: k-NN precision and recall (Kynkäänniemi et al.
2019, "Improved precision and recall metric for assessing generative models"), density and coverage (Naeem et al.
2020, "Reliable fidelity and diversity metrics for generative models") and, for 2-D points, the total-variation
distance between histograms. Re-exported by :mod:`lcssm.metrics`.

All work on points or feature vectors ``(N, d)``. Each real point ``r_i`` gets the radius ``ρ_k(r_i)``, the
distance to its k-th nearest other real point, and the real manifold is the union of the balls ``B(r_i, ρ_k(r_i))``
(the same for fake points). Then

- precision = fraction of fake points inside the real manifold; recall = fraction of real points inside the fake
  manifold (Kynkäänniemi et al., Eq. 1-3);
- density = ``(1/(kM)) Σ_j Σ_i 1[f_j ∈ B(r_i, ρ_k(r_i))]`` (about 1 for matching distributions, unbounded above);
  coverage = fraction of real balls that hold at least one fake point (Naeem et al., Eq. 3-4).

- outside fraction = fraction of fake points outside the real points' bounding box widened by ``margin`` times its
  extent on every side: far strays, which cost precision only their share of the points (five samples at 20× the
  data's radius in 2,000 move precision by 0.0025) but squeeze a scatter plot with automatic axes to a dot.

A collapsed or blurred model fails them where energy distance may not: a round blob over two spirals has high recall
but low precision; samples on half the support have high precision but recall about ½.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lcssm.errors import DataError

__all__ = ["density_coverage", "histogram_distance", "knn_precision_recall", "knn_radii", "outside_fraction"]


def _as_points(x, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to(torch.float64).cpu()
    if t.dim() != 2 or len(t) < 2:
        raise DataError(f"{name} must be points of shape (N >= 2, d), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} holds non-finite values")
    return t


def _check_k(k: int, *sets: Tensor) -> None:
    smallest = min(len(s) for s in sets)
    if not isinstance(k, int) or not 1 <= k < smallest:
        raise DataError(f"k must be an integer in [1, {smallest - 1}] for sets of {smallest} points, got {k!r}")


def knn_radii(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """``ρ_k(x_i)``: the distance from each row to its k-th nearest other row (itself excluded), shape (N,)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        # the (k+1)-th smallest: the 1st is the point itself, at distance 0 (topk: kthvalue's values, faster)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside_counts(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """For each point, how many balls ``B(centre_i, radius_i)`` contain it, shape (len(points),)."""
    counts = []
    for i in range(0, len(points), chunk):
        counts.append((torch.cdist(points[i:i + chunk], centres) <= radii[None, :]).sum(1))
    return torch.cat(counts)


def knn_precision_recall(real, fake, *, k: int = 5) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` with k-NN manifolds (Kynkäänniemi et al. 2019)."""
    real, fake = _as_points(real, "real"), _as_points(fake, "fake")
    _check_k(k, real, fake)
    precision = (_inside_counts(fake, real, knn_radii(real, k)) > 0).double().mean().item()
    recall = (_inside_counts(real, fake, knn_radii(fake, k)) > 0).double().mean().item()
    return precision, recall


def density_coverage(real, fake, *, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of ``fake`` against ``real`` with the real k-NN balls (Naeem et al. 2020)."""
    real, fake = _as_points(real, "real"), _as_points(fake, "fake")
    _check_k(k, real, fake)
    radii = knn_radii(real, k)
    density = _inside_counts(fake, real, radii).double().sum().item() / (k * len(fake))
    covered = torch.zeros(len(real), dtype=torch.bool)
    for i in range(0, len(real), 2048):
        covered[i:i + 2048] = (torch.cdist(real[i:i + 2048], fake) <= radii[i:i + 2048, None]).any(1)
    return density, covered.double().mean().item()


def histogram_distance(a, b, *, bins: int = 40, bounds: tuple[float, float, float, float] | None = None) -> float:
    """Total-variation distance ``½ Σ |p − q|`` between the 2-D histograms of ``a`` and ``b`` on one grid of
    ``bins`` × ``bins`` cells over ``bounds`` (x0, x1, y0, y1; default: the box of both sets). Points outside the
    box count in no cell of either, so they add to the distance through the mass the other set keeps."""
    a, b = _as_points(a, "a"), _as_points(b, "b")
    if a.shape[1] != 2 or b.shape[1] != 2:
        raise DataError(f"histogram_distance is for 2-D points, got dims {a.shape[1]} and {b.shape[1]}")
    if bounds is None:
        both = torch.cat([a, b])
        lo, hi = both.min(0).values, both.max(0).values
        bounds = (lo[0].item(), hi[0].item(), lo[1].item(), hi[1].item())
    edges = [np.linspace(bounds[0], bounds[1], bins + 1), np.linspace(bounds[2], bounds[3], bins + 1)]
    p = np.histogram2d(a[:, 0].numpy(), a[:, 1].numpy(), bins=edges)[0] / len(a)
    q = np.histogram2d(b[:, 0].numpy(), b[:, 1].numpy(), bins=edges)[0] / len(b)
    outside = abs((1 - p.sum()) - (1 - q.sum()))
    return float(0.5 * (np.abs(p - q).sum() + outside))


def outside_fraction(real, fake, *, margin: float = 0.25) -> float:
    """Fraction of ``fake`` points outside the box ``[lo − margin·(hi − lo), hi + margin·(hi − lo)]`` of ``real``
    (per coordinate; a point is outside when any coordinate is)."""
    real, fake = _as_points(real, "real"), _as_points(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"real and fake must have the same dimension, got {real.shape[1]} and {fake.shape[1]}")
    if not margin >= 0:
        raise DataError(f"margin must be >= 0, got {margin}")
    lo, hi = real.min(0).values, real.max(0).values
    pad = margin * (hi - lo)
    return ((fake < lo - pad) | (fake > hi + pad)).any(1).double().mean().item()
