"""Figures written next to run outputs (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from lcssm.errors import DataError  # noqa: E402

Bounds = tuple[float, float, float, float]


def save_figure(fig, path: str | Path, *, dpi: int = 120, crop: bool = False, **layout) -> None:
    """Lay out, write and close a figure: ``layout`` goes to ``tight_layout``; with ``crop`` the saved image is
    cropped to what is drawn instead (``bbox_inches="tight"``: figures with a colour bar over several axes or a
    caption placed in figure coordinates, which ``tight_layout`` does not arrange)."""
    if crop:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    else:
        fig.tight_layout(**layout)
        fig.savefig(path, dpi=dpi)
    plt.close(fig)


def bounds_of(x: np.ndarray | torch.Tensor, margin: float = 0.1) -> Bounds:
    """(xmin, xmax, ymin, ymax) of 2-D points with a relative margin."""
    x = np.asarray(x)
    lo, hi = np.percentile(x, 0.5, axis=0), np.percentile(x, 99.5, axis=0)
    pad = margin * (hi - lo)
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])


def histogram_bins(n: int) -> int:
    """Bins per axis for a 2-D histogram of ``n`` points: enough points per bin to see the shape."""
    return int(np.clip(1.5 * np.sqrt(n), 40, 200))


def histogram_counts(points: np.ndarray, bounds: Bounds, bins: int) -> np.ndarray:
    """Points per bin of a ``bins`` × ``bins`` grid over ``bounds``, indexed ``[x_1, x_2]``."""
    edges = [np.linspace(bounds[0], bounds[1], bins + 1), np.linspace(bounds[2], bounds[3], bins + 1)]
    return np.histogram2d(points[:, 0], points[:, 1], bins=edges)[0]


def histogram_panel(ax, counts: np.ndarray, bounds: Bounds, vmax: float, title: str | None = None):
    """Draw one 2-D histogram from :func:`histogram_counts` on ``ax`` (colour scale 0 … ``vmax``); returns the image
    for a colour bar."""
    image = ax.imshow(counts.T, origin="lower", extent=bounds, cmap="magma", vmin=0, vmax=vmax or 1.0,
                      aspect="equal", interpolation="nearest")
    if title is not None:
        ax.set_title(title)
    return image


def plot_samples_2d(path: str | Path, samples, reference=None, *, bounds: Bounds | None = None,
                    title: str = "samples") -> None:
    """2-D histogram of samples, next to as many reference points when given: the same range, the same bins and
    one colour scale (points per bin) for both panels, with a colour bar and a caption saying so."""
    samples = np.asarray(samples)
    n = len(samples)
    panels = [(samples, title)] + ([(np.asarray(reference)[:n], "data")] if reference is not None else [])
    bounds = bounds or bounds_of(panels[-1][0])
    bins = histogram_bins(n)
    counts = [histogram_counts(pts, bounds, bins) for pts, _ in panels]
    vmax = max(float(c.max()) for c in counts)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) + 0.8, 3.8), squeeze=False)
    for ax, (pts, name), c in zip(axes[0], panels, counts):
        image = histogram_panel(ax, c, bounds, vmax, f"{name} ({len(pts):,} points)")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.85, label="points per bin")
    width = (bounds[1] - bounds[0]) / bins
    fig.text(0.02, 0.0, f"2-D histograms on the same {bins}×{bins} bins (width {width:.3g}) and colour scale",
             fontsize=8)
    save_figure(fig, path, crop=True)


def density_grid(log_density: Callable[[torch.Tensor], torch.Tensor], bounds: Bounds, n: int = 200
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate an unnormalised log-density on an n×n grid; returns (xs, ys, normalised density)."""
    xs = np.linspace(bounds[0], bounds[1], n)
    ys = np.linspace(bounds[2], bounds[3], n)
    xx, yy = np.meshgrid(xs, ys, indexing="xy")
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)
    with torch.no_grad():
        logp = torch.cat([log_density(chunk) for chunk in pts.split(10_000)]).double().numpy()
    p = np.exp(logp - logp.max()).reshape(n, n)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    return xs, ys, p / (p.sum() * cell)


def plot_density_2d(path: str | Path, log_density: Callable[[torch.Tensor], torch.Tensor], bounds: Bounds,
                    *, title: str = "learned density exp f") -> None:
    """An unnormalised log-density f as exp f, normalised to integrate to 1 over the plotted box (captioned)."""
    xs, ys, p = density_grid(log_density, bounds)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(p, origin="lower", extent=bounds, cmap="magma", aspect="equal")
    ax.set_title(title)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    fig.colorbar(image, ax=ax, shrink=0.85, label="density")
    fig.text(0.01, 0.01, f"exp f on a {len(xs)}×{len(ys)} grid, normalised over the plotted box", fontsize=8)
    save_figure(fig, path, crop=True)


def plot_losses(path: str | Path, curves: dict[str, Sequence[float]], *, title: str = "training loss",
                smooth: int = 50) -> None:
    """Loss curves, one colour per named run: the raw per-step loss (faint) and its moving average over ``smooth``
    steps (solid), each labelled."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, losses in curves.items():
        y = np.asarray(losses, dtype=float)
        line = ax.plot(y, alpha=0.25, lw=0.8, label=f"{name}, raw")[0]
        if len(y) > smooth:
            avg = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth - 1, len(y)), avg, color=line.get_color(),
                    label=f"{name}, mean of {smooth} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    finite = np.concatenate([np.asarray(c, dtype=float) for c in curves.values()])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = np.percentile(finite, [1, 99])
        pad = 0.1 * abs(hi - lo) or 0.5 * max(abs(hi), 1.0)  # one value (or a flat curve): a band around it
        ax.set_ylim(lo - pad, hi + pad)
    ax.legend()
    save_figure(fig, path)


def tile_images(images: Tensor, *, ncol: int | None = None, gap_value: float = 128, zoom: int = 1) -> Tensor:
    """Images ``(N, C, H, W)`` tiled row by row into one ``(C, H', W')`` canvas of their dtype, with 1-pixel gaps
    (and a border) of ``gap_value``; ``ncol`` defaults to ⌈√N⌉, ``zoom`` enlarges each pixel to a zoom×zoom block."""
    if images.dim() != 4 or len(images) == 0:
        raise DataError(f"tile_images needs images (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    imgs = images.detach().cpu()
    if zoom > 1:
        imgs = imgs.repeat_interleave(zoom, 2).repeat_interleave(zoom, 3)
    n, c, h, w = imgs.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = torch.full((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1), gap_value, dtype=imgs.dtype)
    for i, im in enumerate(imgs):
        r, q = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = im
    return canvas


def save_image_grid(path: str | os.PathLike, images: Tensor, *, ncol: int | None = None, min_tile: int = 32,
                    gap_value: int = 128) -> Path:
    """Tile uint8 images ``(N, C, H, W)`` (C = 1 or 3) into a PNG with 1-pixel gaps of grey ``gap_value``
    (:func:`tile_images`). ``ncol`` defaults to ⌈√N⌉. Images smaller than ``min_tile`` pixels are enlarged by an
    integer factor (nearest neighbour) so that 8x8 digits stay visible.
    """
    from PIL import Image

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise DataError(f"save_image_grid needs uint8 images (N, 1|3, H, W), got {images.dtype} "
                        f"{tuple(images.shape)}")
    zoom = max(1, math.ceil(min_tile / min(images.shape[2:])))
    arr = tile_images(images, ncol=ncol, gap_value=gap_value, zoom=zoom).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
    return path
