"""Toy 2-D distributions (FFJORD / toy_gradlogp conventions) and point files.

Every sampler is ``sample(n, generator) -> (n, 2) float32``. The checkerboard also has its σ-smoothed
density and score in closed form (:func:`checkerboard_logpdf`), which gives the in-support ceiling of a model
that learned the σ-smoothed data and the reference score for score-error measurements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lcssm.errors import DataError

Distribution = Callable[[int, torch.Generator | None], Tensor]

__all__ = [
    "TOY_DATASETS",
    "checkerboard_in_support",
    "checkerboard_in_support_ceiling",
    "checkerboard_logpdf",
    "get_toy",
    "load_points",
    "smoothed",
]


def _rand(n: int, g: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=g)


def _randn(n: int, g: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=g)


def checkerboard(n: int, g: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 squares of side 2 in [−4, 4]² where ⌊x/2⌋ + ⌊y/2⌋ is even."""
    x1 = _rand(n, g) * 4 - 2
    x2 = _rand(n, g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1).remainder(2)
    return torch.stack([x1, x2], 1) * 2


def eight_gaussians(n: int, g: torch.Generator | None = None) -> Tensor:
    """Eight Gaussians (std 0.5) centred on a circle of radius 4, all divided by 1.414 (FFJORD)."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 4.0
    idx = torch.randint(0, 8, (n,), generator=g)
    return (centers[idx] + 0.5 * _randn(n, g, 2)) / 1.414


def two_spirals(n: int, g: torch.Generator | None = None) -> Tensor:
    """Two interleaved spirals (FFJORD's 2spirals)."""
    t = torch.sqrt(_rand(n, g)) * 540 * (2 * math.pi) / 360
    d1x = -torch.cos(t) * t + _rand(n, g) * 0.5
    d1y = torch.sin(t) * t + _rand(n, g) * 0.5
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x = torch.stack([d1x, d1y], 1) * sign[:, None] / 3
    return x + 0.1 * _randn(n, g, 2)


def rings(n: int, g: torch.Generator | None = None) -> Tensor:
    """Four concentric circles of radii 0.75, 1.5, 2.25, 3 with N(0, 0.08²) noise (FFJORD)."""
    radius = (torch.randint(0, 4, (n,), generator=g).float() + 1) * 0.75
    angle = _rand(n, g) * 2 * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius[:, None]
    return x + 0.08 * _randn(n, g, 2)


def moons(n: int, g: torch.Generator | None = None) -> Tensor:
    """scikit-learn's make_moons with noise 0.1, then ``2x + (−1, −0.2)`` (FFJORD)."""
    upper = torch.randint(0, 2, (n,), generator=g).bool()
    angle = _rand(n, g) * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x, y], 1) + 0.1 * _randn(n, g, 2)
    return 2 * pts + torch.tensor([-1.0, -0.2])


def swissroll(n: int, g: torch.Generator | None = None) -> Tensor:
    """2-D Swiss roll (scikit-learn's make_swiss_roll, x/z plane) scaled by 1/5 as in FFJORD."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    return (x + 1.0 * _randn(n, g, 2)) / 5


def pinwheel(n: int, g: torch.Generator | None = None) -> Tensor:
    """Pinwheel with 5 arms (FFJORD)."""
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = torch.linspace(0, 2 * math.pi, num_classes + 1)[:-1]
    features = _randn(n, g, 2) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = torch.randint(0, num_classes, (n,), generator=g)
    angles = rads[labels] + rate * torch.exp(features[:, 0])
    rot = torch.stack([torch.cos(angles), torch.sin(angles), -torch.sin(angles), torch.cos(angles)], 1).view(-1, 2, 2)
    return 2 * torch.einsum("ni,nij->nj", features, rot)


def student3(n: int, g: torch.Generator | None = None) -> Tensor:
    """Heavy-tailed: independent Student-t coordinates with 3 degrees of freedom, scale 0.5 (power-law tails,
    P(|x_i| > r) ∝ r⁻³; variance 0.75 per coordinate), drawn as z/√(χ²₃/3)."""
    z, chi2 = _randn(n, g, 2), _randn(n, g, 3, 2).pow(2).sum(1)
    return 0.5 * z / (chi2 / 3).sqrt()


def gaussian(n: int, g: torch.Generator | None = None) -> Tensor:
    """The Gaussian-tailed control of :func:`student3`: N(0, 0.75 I), the same variance per coordinate."""
    return math.sqrt(0.75) * _randn(n, g, 2)


TOY_DATASETS: dict[str, Distribution] = {
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "rings": rings,
    "moons": moons,
    "swissroll": swissroll,
    "pinwheel": pinwheel,
    "student3": student3,
    "gaussian": gaussian,
}


def get_toy(name: str) -> Distribution:
    """The toy sampler called ``name``; DataError listing the valid names otherwise."""
    try:
        return TOY_DATASETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(TOY_DATASETS)
        raise DataError(f"unknown toy dataset {name!r}; valid: {valid} (or a .npy/.csv path)") from None


def smoothed(sample: Distribution, sigma: float) -> Distribution:
    """The σ-smoothed version of a sampler: x + σ·n."""

    def sample_smoothed(n: int, g: torch.Generator | None = None) -> Tensor:
        x = sample(n, g)
        return x + sigma * torch.randn(x.shape, generator=g)

    return sample_smoothed


# ------------------------------------------------------------------------------- checkerboard, closed form
_CELLS = torch.tensor([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=torch.float64)


def checkerboard_in_support(x: Tensor) -> Tensor:
    """Boolean (n,): whether each point lies on the checkerboard's support."""
    inside = (x.abs() < 4).all(1)
    parity = (torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)).remainder(2) == 0
    return inside & parity


def _cell_probs(x: Tensor, sigma: float) -> Tensor:
    """P(cell) for each point and support cell: Π_dims [Φ((hi − x)/σ) − Φ((lo − x)/σ)], shape (n, 8)."""
    lo = (2 * _CELLS).to(x)  # (8, 2)
    hi = lo + 2
    normal = torch.distributions.Normal(torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype))
    xe = x[:, None, :]
    return (normal.cdf((hi - xe) / sigma) - normal.cdf((lo - xe) / sigma)).prod(-1)


def checkerboard_logpdf(x: Tensor, sigma: float) -> Tensor:
    """Log-density of the σ-smoothed checkerboard, ``log((1/32)·Σ_cells P(cell | x, σ))``; differentiable, so
    ``torch.autograd.grad`` gives its exact score. Use float64 for points far from the support."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return torch.log(_cell_probs(x, sigma).sum(1)) - math.log(32.0)


def _psi(w: float) -> float:
    """Antiderivative of Φ: ∫Φ(w)dw = wΦ(w) + φ(w)."""
    from scipy.stats import norm

    return w * norm.cdf(w) + norm.pdf(w)


def _interval_transfer(a: float, b: float, sigma: float) -> float:
    """P(u + σn ∈ [b, b+2]) for u ~ U[a, a+2], n ~ N(0, 1), in closed form."""

    def integral_cdf(c: float) -> float:  # ∫_a^{a+2} Φ((c − u)/σ) du
        return float(sigma * (_psi((c - a) / sigma) - _psi((c - a - 2) / sigma)))

    return (integral_cdf(b + 2) - integral_cdf(b)) / 2


@functools.lru_cache(maxsize=64)
def checkerboard_in_support_ceiling(sigma: float) -> float:
    """Fraction of σ-smoothed checkerboard points that lie on the support (exact, via normal CDF integrals).

    A model that learns the σ-smoothed density exactly reaches this in-support fraction and no more.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    cells = [(int(i), int(j)) for i, j in _CELLS.tolist()]
    total = 0.0
    for ci, cj in cells:
        for di, dj in cells:
            total += _interval_transfer(2 * ci, 2 * di, sigma) * _interval_transfer(2 * cj, 2 * dj, sigma)
    return total / len(cells)


# ------------------------------------------------------------------------------------------------ point files
def load_points(path: str | Path) -> Tensor:
    """Load points of shape ``(n, d)`` (any d >= 1; a 1-D array is read as d = 1) from ``.npy`` or ``.csv``.

    CSV: comma-separated numbers, an optional non-numeric header line. Raises DataError for a missing file,
    an unknown extension, a malformed file, non-finite values, fewer than 2 points or more than 2 dims.
    """
    p = Path(path)
    arr = _read_array(p)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"point file {str(p)!r} holds {arr.dtype} values; expected numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise DataError(f"point file {str(p)!r} must hold an array of shape (n, d), got {arr.shape}")
    if arr.shape[0] < 2:
        raise DataError(f"point file {str(p)!r} holds {arr.shape[0]} point(s); need at least 2")
    if not np.isfinite(arr).all():
        raise DataError(f"point file {str(p)!r} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _read_array(p: Path) -> np.ndarray:
    """The array in the ``.npy`` or ``.csv`` file ``p``; DataError naming the file when it cannot be read."""
    if not p.exists():
        raise DataError(f"point file {str(p)!r} does not exist")
    if p.is_dir():
        raise DataError(f"point file {str(p)!r} is a directory")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".csv":
            arr = _load_csv(p)
        else:
            raise DataError(f"point file {str(p)!r}: unsupported extension {suffix!r}; use .npy or .csv")
    except DataError:
        raise
    except ValueError as e:
        if suffix == ".npy" and "pickle" in str(e):  # numpy's hint would be to load it unsafely
            raise DataError(f"point file {str(p)!r} is not a .npy array file (or holds Python objects, which lcssm "
                            "never unpickles); save the points with numpy.save or as .csv") from None
        raise DataError(f"point file {str(p)!r} could not be read: {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"point file {str(p)!r} could not be read: {e}") from None
    return arr


def _load_csv(p: Path) -> np.ndarray:
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"point file {str(p)!r} is empty")
    try:
        [float(v) for v in lines[0].split(",")]
        skip = 0
    except ValueError:
        skip = 1  # header line
    arr = np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    return arr
