"""Sample-quality metrics: energy distance, MMD, Fréchet distance (FID), KID and Inception Score.

All statistics are accumulated in float64. Point sets and feature sets are ``(n, d)`` arrays (torch
tensors or numpy arrays); pairwise sums are computed in row chunks, so memory stays at
``O(chunk * m)`` rather than ``O(n * m)``. Randomness (subsampling, KID subsets) comes from a
``torch.Generator`` argument; ``None`` means a generator seeded with 0, so results are reproducible.

References
- Energy distance: Székely & Rizzo, "Energy statistics" (J. Stat. Plan. Inference, 2013), Eq. 1.
- MMD: Gretton et al., "A kernel two-sample test" (JMLR 2012), unbiased estimator Eq. 3.
- FID: Heusel et al., "GANs trained by a two time-scale update rule" (NeurIPS 2017).
- KID: Bińkowski et al., "Demystifying MMD GANs" (ICLR 2018), cubic polynomial kernel.
- IS: Salimans et al., "Improved techniques for training GANs" (NeurIPS 2016).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lcssm.device import make_generator
from lcssm.errors import DataError

ArrayLike = torch.Tensor | np.ndarray

_CHUNK_ELEMENTS = 2**22  # entries of one (rows x m) distance block: 32 MiB in float64


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _points(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a float64 ``(n, d)`` tensor with finite entries (on ``device`` if given)."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n, d) array of points, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise DataError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return t


def _pair(x: ArrayLike, y: ArrayLike, min_points: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two point sets: float64, same device (x's), same dimension, >= ``min_points`` each."""
    xt = _points(x, "x")
    yt = _points(y, "y", device=xt.device)
    if xt.shape[1] != yt.shape[1]:
        raise DataError(f"x and y must have the same dimension, got {xt.shape[1]} and {yt.shape[1]}")
    for name, t in (("x", xt), ("y", yt)):
        if t.shape[0] < min_points:
            raise DataError(f"{name} needs at least {min_points} points, got {t.shape[0]}")
    return xt, yt


def _subsample(x: torch.Tensor, max_points: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_points`` rows of ``x``, drawn without replacement."""
    if max_points is None or x.shape[0] <= max_points:
        return x
    idx = torch.randperm(x.shape[0], generator=generator)[:max_points]
    return x[idx.to(x.device)]


def _check_max_points(max_points: int | None) -> None:
    if max_points is not None and (not isinstance(max_points, int) or max_points < 2):
        raise DataError(f"max_points must be an integer >= 2 or None, got {max_points!r}")


def _pairwise_sum(a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], same: bool) -> float:
    """``sum_{i,j} fn(|a_i - b_j|^2)``, excluding ``i == j`` when ``same`` (then ``a is b``).

    Squared distances use ``|a|^2 + |b|^2 - 2 a.b`` (clamped at 0) on points centred at their joint
    mean, which keeps the cancellation error at float64 round-off relative to the spread.
    """
    a2 = (a * a).sum(1)
    b2 = a2 if same else (b * b).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0]))
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i0 in range(0, a.shape[0], rows):
        blk = a[i0 : i0 + rows]
        d2 = (a2[i0 : i0 + rows, None] + b2[None, :] - 2.0 * (blk @ b.T)).clamp_min_(0.0)
        vals = fn(d2)
        if same:
            r = torch.arange(blk.shape[0], device=a.device)
            vals[r, i0 + r] = 0.0
        total += vals.sum()
    return float(total)


def _centre(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.cat([x, y]).mean(0)
    return x - c, y - c


# --------------------------------------------------------------------------------------------------
# energy distance and MMD (raw point sets)
# --------------------------------------------------------------------------------------------------


def energy_distance(
    x: ArrayLike,
    y: ArrayLike,
    *,
    max_points: int | None = 5000,
    generator: torch.Generator | None = None,
) -> float:
    """Squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between point sets ``(n,d)``, ``(m,d)``.

    The within-set terms are U-statistics (pairs ``i != j``), so the estimate is unbiased and has
    mean 0 when both sets come from the same distribution (it can then be slightly negative). It is
    >= 0 in the population, and 0 only for equal distributions (Székely & Rizzo 2013, Eq. 1).

    Sets larger than ``max_points`` are subsampled without replacement using ``generator`` (CPU;
    ``None`` = seeded with 0). Pass ``max_points=None`` to use every point. Computed in float64 on
    ``x``'s device, in row chunks.
    """
    _check_max_points(max_points)
    xt, yt = _pair(x, y)
    g = generator if generator is not None else make_generator(0)
    xt, yt = _centre(_subsample(xt, max_points, g), _subsample(yt, max_points, g))
    n, m = xt.shape[0], yt.shape[0]
    e_xy = _pairwise_sum(xt, yt, torch.sqrt, same=False) / (n * m)
    e_xx = _pairwise_sum(xt, xt, torch.sqrt, same=True) / (n * (n - 1))
    e_yy = _pairwise_sum(yt, yt, torch.sqrt, same=True) / (m * (m - 1))
    return 2.0 * e_xy - e_xx - e_yy


def median_bandwidth(x: ArrayLike, y: ArrayLike, *, max_points: int = 1000) -> float:
    """Median heuristic: the median pairwise Euclidean distance in the pooled sample.

    Uses the first ``max_points`` points of each set (deterministic); falls back to 1.0 when every
    pooled point coincides.
    """
    xt, yt = _pair(x, y, min_points=1)
    z = torch.cat([xt[:max_points], yt[:max_points]])
    d = torch.pdist(z)
    med = float(d.median()) if d.numel() else 0.0
    return med if med > 0.0 else 1.0


def mmd_rbf(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bandwidths: Sequence[float] | None = None,
    max_points: int | None = 5000,
    generator: torch.Generator | None = None,
) -> float:
    """Unbiased MMD² with the multi-bandwidth RBF kernel ``k(a,b) = sum_s exp(-|a-b|² / (2 s²))``.

    Gretton et al. (2012), Eq. 3: ``mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean k(x_i,y_j)``.
    ``bandwidths`` default to ``(0.5, 1, 2)`` times the median pairwise distance of the pooled sample
    (:func:`median_bandwidth`). Subsampling as in :func:`energy_distance`.
    """
    _check_max_points(max_points)
    xt, yt = _pair(x, y)
    g = generator if generator is not None else make_generator(0)
    xt, yt = _centre(_subsample(xt, max_points, g), _subsample(yt, max_points, g))
    if bandwidths is None:
        med = median_bandwidth(xt, yt)
        bandwidths = (0.5 * med, med, 2.0 * med)
    bws = [float(s) for s in bandwidths]
    if not bws or any(not np.isfinite(s) or s <= 0.0 for s in bws):
        raise DataError(f"bandwidths must be a non-empty list of positive numbers, got {list(bandwidths)}")

    def kernel(d2: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(d2)
        for s in bws:
            out += torch.exp(d2 / (-2.0 * s * s))
        return out

    n, m = xt.shape[0], yt.shape[0]
    k_xy = _pairwise_sum(xt, yt, kernel, same=False) / (n * m)
    k_xx = _pairwise_sum(xt, xt, kernel, same=True) / (n * (n - 1))
    k_yy = _pairwise_sum(yt, yt, kernel, same=True) / (m * (m - 1))
    return k_xx + k_yy - 2.0 * k_xy


# --------------------------------------------------------------------------------------------------
# Fréchet distance (FID)
# --------------------------------------------------------------------------------------------------


def _as_np64(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` (unbiased, ``N-1``) of ``(N, d)`` features, in float64."""
    f = _as_np64(_points(features, "features"))
    if f.shape[0] < 2:
        raise DataError(f"feature_statistics needs at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` for symmetric PSD ``S1``, ``S2``.

    ``S1^{1/2} S2 S1^{1/2}`` is symmetric PSD and similar to ``S1 S2``, so this equals
    ``tr(sqrtm(S1 S2))`` (the form pytorch-fid evaluates) without a non-symmetric matrix square root:
    the trace is the sum of the square roots of its (clipped) eigenvalues.
    """
    r = _sym_sqrt(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein²) distance between ``N(mu1, S1)`` and ``N(mu2, S2)``.

    ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` (Heusel et al. 2017).
    Covariances are symmetrised; see :func:`trace_sqrt_product` for the stable square root.
    """
    m1, m2 = _as_np64(mu1), _as_np64(mu2)
    s1, s2 = _as_np64(sigma1), _as_np64(sigma2)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise DataError(f"mu1 and mu2 must be vectors of the same length, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise DataError(f"{name} must have shape ({d}, {d}) to match the means, got {s.shape}")
    for name, a in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise DataError(f"{name} contains NaN or infinite values")
    s1, s2 = (s1 + s1.T) / 2.0, (s2 + s2.T) / 2.0
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def fid_from_features(f1: ArrayLike, f2: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, d)`` feature sets (FID for Inception
    pool3 features)."""
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    if mu1.shape != mu2.shape:
        raise DataError(f"feature sets differ in dimension: {mu1.shape[0]} and {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2)


# --------------------------------------------------------------------------------------------------
# KID and Inception Score
# --------------------------------------------------------------------------------------------------


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with ``k(a, b) = (a.b / d + 1)^3`` for equal-size sets (Bińkowski et al. 2018)."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    off = m * (m - 1)
    return float(
        (k_xx.sum() - k_xx.diagonal().sum()) / off + (k_yy.sum() - k_yy.diagonal().sum()) / off - 2.0 * k_xy.mean()
    )


def kid(
    f1: ArrayLike,
    f2: ArrayLike,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over ``n_subsets`` of the unbiased polynomial MMD².

    Each subset draws ``min(subset_size, N1, N2)`` rows of each feature set without replacement (with a
    warning when that is fewer than ``subset_size``, since the estimate's variance depends on it)
    (``generator`` on CPU; ``None`` = seeded with 0); the std is across subsets (ddof 0, as in
    torch-fidelity and clean-fid); when the subsets are both whole sets, the MMD² is computed once and its std
    is 0 (the subsets only permute the rows). The estimate has mean 0 for identical distributions.
    """
    if not isinstance(n_subsets, int) or n_subsets < 1:
        raise DataError(f"n_subsets must be a positive integer, got {n_subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise DataError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    x, y = _pair(f1, f2)
    g = generator if generator is not None else make_generator(0)
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < subset_size:
        warnings.warn(f"KID: subset_size {subset_size} exceeds the rows ({x.shape[0]}, {y.shape[0]}); using subsets "
                      f"of {m} (pass subset_size <= the smaller set to silence this)", stacklevel=2)
    if m == x.shape[0] == y.shape[0]:  # every subset is both whole sets: one value, spread exactly 0
        return float(_poly_mmd2(x, y)), 0.0
    vals = []
    for _ in range(n_subsets):
        ix = torch.randperm(x.shape[0], generator=g)[:m].to(x.device)
        iy = torch.randperm(y.shape[0], generator=g)[:m].to(y.device)
        vals.append(_poly_mmd2(x[ix], y[iy]))
    a = np.asarray(vals)
    return float(a.mean()), float(a.std())


def inception_score(probs: ArrayLike, *, n_splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``: mean and std (ddof 0) over ``n_splits`` splits.

    ``probs`` is ``(N, C)`` class probabilities (rows sum to 1). The marginal ``p(y)`` is the mean of
    each split; splits are ``np.array_split`` of the rows in order (all rows used). IS lies in
    ``[1, C]``: 1 when every row is the same, C for confident predictions with a uniform marginal.
    """
    p = _as_np64(_points(probs, "probs"))
    n, _ = p.shape
    if not isinstance(n_splits, int) or not 1 <= n_splits <= n:
        raise DataError(f"n_splits must be an integer in [1, {n}] (the number of rows), got {n_splits!r}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise DataError("probs must be non-negative with rows summing to 1 (apply softmax to logits first)")
    from scipy.special import xlogy

    scores = []
    for part in np.array_split(p, n_splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())
