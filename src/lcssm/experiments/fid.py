"""FID, KID and IS of an image run's samples against its training images.

Digits runs use the shipped digits classifier's 128-d features ("digits-FID"); other runs the FID Inception-v3
pool3 features from a local weights file (``inception`` or $LCSSM_INCEPTION_WEIGHTS), which lcssm never downloads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lcssm.data.levels import ImageData, levels_to_float
from lcssm.device import make_generator
from lcssm.errors import ConfigError
from lcssm.files import append_metrics

__all__ = ["feature_extractor", "fid_run", "image_quality"]

FeatureFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def feature_extractor(data, inception_path: str | os.PathLike | None = None,
                      device: str | torch.device = "auto") -> tuple[str, FeatureFn]:
    """``(name, fn)`` with ``fn(images in [−1, 1]) -> (features, class probabilities)``: the shipped digits
    classifier for a digits run's :class:`~lcssm.experiments.spec.DataSpec`, else FID Inception-v3 from
    ``inception_path`` (or $LCSSM_INCEPTION_WEIGHTS); DataError naming the file and where to get it when the weights
    are missing."""
    from lcssm.features import digits_features, inception_features, load_digits_classifier, load_inception

    if data.source == "digits":
        clf = load_digits_classifier(device)
        return "digits-classifier", lambda x: digits_features(x, model=clf)
    net = load_inception(inception_path, device)
    return "inception-v3", lambda x: inception_features(x, net)


def _features(chunks: Iterable[Tensor], features: FeatureFn) -> tuple[Tensor, Tensor]:
    """``features`` of uint8 image chunks, each mapped to [−1, 1] only when its turn comes, concatenated."""
    out = [features(levels_to_float(chunk, 256, "minus_one_one")) for chunk in chunks]
    return torch.cat([f for f, _ in out]), torch.cat([p for _, p in out])


def image_quality(images: Tensor, reference: Tensor | ImageData, features: FeatureFn, *, kid_subset_size: int = 1000,
                  seed: int = 0, chunk_size: int = 500) -> dict[str, float]:
    """FID, KID (mean, std over 100 subsets) and IS (mean, std over ≤ 10 splits) of uint8 ``images`` ``(N, C, H,
    W)`` against ``reference`` (uint8 images, or a split whose levels are converted to 8 bits), through ``features``
    (images mapped to [−1, 1]). Images go through ``features`` ``chunk_size`` at a time, so a reference split of
    any size needs memory only for its features."""
    from lcssm.metrics import fid_from_features, inception_score, kid

    f_s, p_s = _features(images.split(chunk_size), features)
    if isinstance(reference, ImageData):
        f_r, _ = _features((reference.uint8(c) for c in reference.chunks(chunk_size)), features)
    else:
        f_r, _ = _features(reference.split(chunk_size), features)
    kid_mean, kid_std = kid(f_s, f_r, subset_size=kid_subset_size, generator=make_generator(seed))
    is_mean, is_std = inception_score(p_s, n_splits=min(10, len(p_s)))
    return {"fid": fid_from_features(f_s, f_r), "kid": kid_mean, "kid_std": kid_std, "is": is_mean, "is_std": is_std}


def fid_run(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None, *,
            inception_path: str | os.PathLike | None = None, device: str | torch.device = "auto",
            progress: bool = False) -> dict[str, Any]:
    """FID, KID and IS of fresh samples (the run's sampler spec with ``overrides``; 2000 samples unless
    ``n_samples`` is given) against the run's whole training split. The weights are checked before sampling; the
    samples are rounded to 8 bits first, as saved images are, and written to ``fid_samples_{sampler}.npz`` /
    ``.png``. Returns the record appended to ``metrics.json``."""
    from lcssm.experiments.images import load_split, write_images
    from lcssm.experiments.pipeline import open_run, with_sampler
    from lcssm.samplers import draw

    run = open_run(run_dir, device)
    if run.spec.data.kind != "images":
        raise ConfigError(f"{run_dir} is a {run.spec.data.kind} run; FID applies to image runs")
    spec = with_sampler(run.spec, {"n_samples": 2000, **(overrides or {})})
    if spec.sampler.n_samples < 2:
        raise ConfigError(f"n_samples must be >= 2 (FID fits a covariance), got {spec.sampler.n_samples}")
    name, features = feature_extractor(spec.data, inception_path, run.device)
    reference = load_split(spec.data, "train")
    samples, info = draw(run.score_fn, run.sde, spec.data.shape, spec.sampler, device=run.device, progress=progress)
    path = Path(run.run_dir) / f"fid_samples_{spec.sampler.name}.npz"
    images = write_images(path, samples, spec.data.scale)
    began = time.perf_counter()
    quality = image_quality(images, reference, features, seed=spec.sampler.seed)
    info["sample_seconds"] = info.pop("seconds")
    record = {**quality, "features": name, "n_reference": len(reference), "reference": reference.source, **info,
              "metric_seconds": time.perf_counter() - began, "file": str(path), "step": run.step,
              "checkpoint": run.checkpoint.name, "device": str(run.device)}
    append_metrics(run.run_dir, "fid", record)
    return record
