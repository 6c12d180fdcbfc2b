"""The ``points`` data kind: a toy distribution (fresh draws every step) or a point file of any dimension.

It supplies the pipeline (:mod:`lcssm.experiments.pipeline`) with the training batches, the start of the Langevin
sampler, sample quality against fresh data (energy distance with its two-sample floor; the checkerboard's
in-support fraction), the samples file (``samples.npy``), the figures of 2-D runs and the probability-flow
log-likelihood of held-out points.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lcssm.data.toy import (
    TOY_DATASETS,
    Distribution,
    checkerboard_in_support,
    checkerboard_in_support_ceiling,
    get_toy,
    load_points,
    smoothed,
)
from lcssm.device import make_generator
from lcssm.errors import ConfigError
from lcssm.metrics.distances import energy_distance
from lcssm.training.batches import sampler_batches, tensor_batches

__all__ = ["TRACES", "DataSource", "PointsKind", "initial_points", "sample_quality"]

TRACES = ("auto", "exact", "rademacher", "gaussian")


class DataSource:
    """A toy distribution (fresh draws every step) or a fixed point set (epochs of permutations)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        if spec in TOY_DATASETS:
            self.sampler: Distribution | None = get_toy(spec)
            self.points: Tensor | None = None
            self.dim = 2
        elif spec.lower().endswith((".npy", ".csv")) or Path(spec).exists():
            self.points = load_points(spec)
            self.sampler = None
            self.dim = self.points.shape[1]
        else:
            get_toy(spec)  # raises DataError naming the valid names

    def batches(self, batch_size: int, seed: int):
        if self.sampler is not None:
            return sampler_batches(self.sampler, batch_size, seed)
        assert self.points is not None  # no sampler: a point set
        return tensor_batches(self.points, batch_size, seed)

    def reference(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n points of the data distribution (fresh draws, or a resample of the point set)."""
        if self.sampler is not None:
            return self.sampler(n, generator)
        assert self.points is not None  # no sampler: a point set
        idx = torch.randint(0, len(self.points), (n,), generator=generator)
        return self.points[idx]


def initial_points(init: str, n: int, data: DataSource, generator: torch.Generator) -> Tensor:
    """Langevin start: uniform over the data's bounding box (App. B: uniform on [−4, 4]² for the checkerboard), or a
    Gaussian with the data's mean and std."""
    ref = data.reference(10_000, generator)
    if init == "gaussian":
        return ref.mean(0) + ref.std(0) * torch.randn(n, data.dim, generator=generator)
    lo, hi = ref.min(0).values, ref.max(0).values
    if data.spec == "checkerboard":
        lo, hi = torch.full((2,), -4.0), torch.full((2,), 4.0)
    return lo + (hi - lo) * torch.rand(n, data.dim, generator=generator)


KNN_K = 5  # the k of the k-NN metrics (Kynkäänniemi et al. 2019 use k = 3-5)
KNN_POINTS = 2000  # samples and held-out points compared by the k-NN and histogram metrics
HIST_BINS = 40  # bins per axis of the 2-D histogram distance
OUTSIDE_MARGIN = 0.25  # the held-out box is widened by this fraction of its extent for the outside fraction


def structure_quality(fake: Tensor, ref_a: Tensor, ref_b: Tensor) -> dict:
    """k-NN precision / recall, density / coverage (k = KNN_K) and the outside fraction (OUTSIDE_MARGIN) of ``fake``
    against held-out ``ref_a``, each with its floor (``ref_b`` against ``ref_a``: what a perfect model scores), and
    for 2-D points the histogram total variation on a HIST_BINS² grid over ``ref_a``'s box, with its floor (the bin
    width is recorded)."""
    from lcssm.metrics.structure import density_coverage, histogram_distance, knn_precision_recall, outside_fraction

    out: dict = {"knn_k": KNN_K, "knn_points": len(fake), "outside_margin": OUTSIDE_MARGIN}
    for name, sample in (("", fake), ("_floor", ref_b)):
        out[f"precision{name}"], out[f"recall{name}"] = knn_precision_recall(ref_a, sample, k=KNN_K)
        out[f"density{name}"], out[f"coverage{name}"] = density_coverage(ref_a, sample, k=KNN_K)
        out[f"outside{name}"] = outside_fraction(ref_a, sample, margin=OUTSIDE_MARGIN)
    if fake.shape[1] == 2:
        lo, hi = ref_a.min(0).values, ref_a.max(0).values
        bounds = (lo[0].item(), hi[0].item(), lo[1].item(), hi[1].item())
        out["hist_tv"] = histogram_distance(fake, ref_a, bins=HIST_BINS, bounds=bounds)
        out["hist_tv_floor"] = histogram_distance(ref_b, ref_a, bins=HIST_BINS, bounds=bounds)
        out["hist_bin_width"] = [(bounds[1] - bounds[0]) / HIST_BINS, (bounds[3] - bounds[2]) / HIST_BINS]
    return out


def sample_quality(samples: Tensor, reference, seed: int, *, checkerboard: bool = False,
                   sigma: float | None = None) -> dict:
    """Energy distance between samples and fresh ``reference(n, generator)`` draws, with its two-sample floor (two
    independent reference sets of the same size); the structure metrics of :func:`structure_quality` on up to
    KNN_POINTS of them; for the checkerboard also the in-support fraction and its ceiling at the reference's
    smoothing ``sigma`` (1 for unsmoothed data). Non-finite samples are counted and left out."""
    g = make_generator(seed + 1_000_003)
    finite = torch.isfinite(samples).all(1)
    n = min(int(finite.sum()), 5000)
    out: dict = {"n_samples": len(samples), "non_finite_samples": int((~finite).sum())}
    if n >= 2:
        ref_a, ref_b = reference(n, g), reference(n, g)
        out["energy_distance"] = energy_distance(samples[finite][:n], ref_a, generator=g)
        out["energy_distance_floor"] = energy_distance(ref_b, ref_a, generator=g)
        m = min(n, KNN_POINTS)
        if m > KNN_K:
            out.update(structure_quality(samples[finite][:m], ref_a[:m], ref_b[:m]))
    if checkerboard:
        out["in_support"] = float(checkerboard_in_support(samples).float().mean())
        out["in_support_ceiling"] = checkerboard_in_support_ceiling(sigma) if sigma else 1.0
    return out


class PointsKind:
    """Hooks of the ``points`` data kind (see :class:`lcssm.experiments.pipeline.DataKind`)."""

    samples_file = "samples.npy"
    samples_need_data = True  # the Langevin start and the sample quality are drawn from the data

    def load(self, spec, split: str = "train") -> DataSource:
        return DataSource(spec.data.source)

    def resolve(self, spec, data: DataSource):
        import dataclasses

        return dataclasses.replace(spec, data=dataclasses.replace(spec.data, shape=(data.dim,), n_bins=0,
                                                                  scale="none"))

    def batches(self, spec, data: DataSource):
        return data.batches(spec.train.batch_size, spec.train.seed)

    def data_rms(self, spec, data: DataSource) -> float:
        """√(mean x²) of the point set, or of 100,000 draws of a toy distribution (seed 0): EDM's σ_data."""
        x = data.points if data.points is not None else data.reference(100_000, make_generator(0))
        return float((x.double() ** 2).mean().sqrt())

    def data_sample(self, spec, data: DataSource, n: int, generator: torch.Generator) -> Tensor:
        """``n`` training points drawn without replacement (all of a smaller set), or ``n`` draws of a toy
        distribution, from ``generator``."""
        if data.points is None:
            return data.reference(n, generator)
        return data.points[torch.randperm(len(data.points), generator=generator)[:n]]

    def callbacks(self, spec, sde, out: Path) -> list:
        return []

    def start_fn(self, spec, data: DataSource):
        return lambda n, g: initial_points(spec.sampler.init, n, data, g)

    def save_samples(self, spec, samples: Tensor, path: Path) -> dict[str, str]:
        from lcssm.files import atomic_save_npy

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(path, samples.numpy().astype(np.float32))
        return {"file": str(path), **({"figure": str(path.with_suffix(".png"))} if samples.shape[1] == 2 else {})}

    def evaluate(self, spec, data: DataSource, samples: Tensor) -> dict[str, Any]:
        sigma = spec.objective.sigma if spec.sde.name == "none" else None
        reference = data.reference if sigma is None else smoothed(data.reference, sigma)
        return sample_quality(samples, reference, spec.sampler.seed, checkerboard=data.spec == "checkerboard",
                              sigma=sigma)

    def figures(self, spec, data: DataSource, samples: Tensor, path: Path, model=None) -> None:
        """For 2-D runs the samples next to the data, beside the samples file (``.png``); with the trained
        ``model`` of an energy run also its density, ``density.png`` in the same folder."""
        if samples.shape[1] != 2:
            return
        from lcssm.plots import bounds_of, plot_density_2d, plot_samples_2d

        ref = data.reference(50_000, make_generator(0))
        bounds = (-4.5, 4.5, -4.5, 4.5) if data.spec == "checkerboard" else bounds_of(ref)
        title = f"{spec.objective.name}/{spec.sde.name} {spec.sampler.name} samples"
        plot_samples_2d(path.with_suffix(".png"), samples, ref, bounds=bounds, title=title)
        if model is not None and hasattr(model.backbone, "log_density"):
            plot_density_2d(path.parent / "density.png", model.backbone.log_density, bounds,
                            title=f"{spec.objective.name}: exp f")

    def bpd(self, run, options) -> dict[str, Any]:
        """Probability-flow negative log-likelihood of ``options.n`` fresh data points (the run's data unless
        ``options.data``), in nats per point and bits per dimension ``−log p / (d ln 2)`` (continuous data, no
        dequantization: it can be negative)."""
        from lcssm.metrics.likelihood import log_likelihood

        if options.trace not in TRACES:
            raise ConfigError(f"unknown trace {options.trace!r}; valid: {', '.join(TRACES)}")
        spec = run.spec
        source = DataSource(options.data or spec.data.source)
        dim = spec.data.shape[0]
        if source.dim != dim:
            raise ConfigError(f"data {source.spec!r} has dimension {source.dim}, the model {dim}")
        n = options.n if options.n is not None else 1000
        x = source.reference(n, make_generator(options.seed)).to(run.device)
        exact = options.trace == "exact" or (options.trace == "auto" and dim <= 16)
        began = time.perf_counter()
        logps, nfes = [], []
        for chunk in x.split(options.batch_size):
            logp, nfe = log_likelihood(run.score_fn, run.sde, chunk, exact_trace=exact, t_min=options.t_min,
                                       hutchinson="gaussian" if options.trace == "gaussian" else "rademacher",
                                       rtol=options.rtol, atol=options.atol,
                                       generator=make_generator(options.seed + 1, run.device),
                                       progress=options.progress)
            logps.append(logp.double().cpu())
            nfes.append(nfe)
        nll = -torch.cat(logps)
        to_bits, se = 1 / (dim * math.log(2)), nll.std().item() / math.sqrt(len(nll))
        return {"data": source.spec, "n": len(nll), "trace": "exact" if exact else options.trace,
                "t_min": options.t_min, "nll_nats": nll.mean().item(), "nll_nats_se": se,
                "bits_per_dim": nll.mean().item() * to_bits, "bits_per_dim_se": se * to_bits,
                "non_finite": int((~torch.isfinite(nll)).sum()), "nfe": float(np.mean(nfes)),
                "seconds": time.perf_counter() - began}
