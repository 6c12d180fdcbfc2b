"""The ``images`` data kind: the bundled 8x8 digits, an image folder or CIFAR-10 batches.

Conventions:

- Data are integer grey levels ``k ∈ {0, …, n_bins − 1}`` (17 for the digits, 256 for image files and CIFAR-10),
  fed to the network as ``k/(n_bins − 1)`` in [0, 1] or ``2k/(n_bins − 1) − 1`` in [−1, 1] (``data.scale``;
  NCSN++ VE and NCSNv2 centre [0, 1] inputs inside the network).
- Bits/dim dequantize the levels uniformly into ``n_bins`` cells, ``(k + U)/n_bins`` (score_sde's convention for
  8-bit data, whose training values are ``k/255``), with the cell-volume offset of the data scale
  (:func:`lcssm.metrics.likelihood.bits_per_dim`).
- Samples are saved as ``samples.npz`` (``images``: uint8 ``(n, C, H, W)``; ``samples``: float32 in the data
  scale) with a ``.png`` grid of the first 256; grids of ``grids.n`` images are written every ``grids.every``
  training steps to ``grids/step_XXXXXXX.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Literal, TypeGuard

import torch
from torch import Tensor

from lcssm.data.cifar10 import find_batch_dir, load_cifar10
from lcssm.data.digits import N_LEVELS as DIGITS_LEVELS
from lcssm.data.digits import load_digits
from lcssm.data.images import conform, load_image_dataset, split_holdout
from lcssm.data.levels import ImageData, levels_to_float, to_uint8
from lcssm.device import make_generator
from lcssm.errors import ConfigError, DataError
from lcssm.training.batches import step_seed, tensor_batches
from lcssm.training.loop import PeriodicCallback

__all__ = ["TRACES", "ImageBatches", "ImagesKind", "load_split"]

TRACES = ("rademacher", "gaussian", "exact")
_FLIP_STREAM = 4  # a random stream of step_seed the trainer does not use (0-3 are taken)
_HOLDOUT_SEED = 0  # the held-out split of an image folder is a property of the folder, not of the run
DIGITS = "digits"
MNIST = "mnist"


def _is_split(split: str) -> TypeGuard[Literal["train", "test"]]:
    return split in ("train", "test")


def _digits_levels(split: Literal["train", "test"]) -> Tensor:
    return torch.round(load_digits(split, scale="zero_one") * (DIGITS_LEVELS - 1)).to(torch.uint8)


def load_split(data, split: str, source: str | os.PathLike | None = None) -> ImageData:
    """The ``train`` or ``test`` split of a run's :class:`~lcssm.experiments.spec.DataSpec`, at its shape.

    Digits: lcssm's fixed split (1437 / 360). MNIST-5k (source ``mnist``): its fixed split (4000 / 1000,
    :mod:`lcssm.data.mnist`). CIFAR-10 batches: ``data_batch_1..5`` / ``test_batch``. An image
    folder: the training folder's fixed held-out split (fraction ``data.holdout``); for ``test``, a ``source``
    other than the training folder is held out as a whole. Image folders are read with the spec's ``strict`` and
    ``cache_dir``.
    """
    if not _is_split(split):
        raise DataError(f"unknown split {split!r}; valid: train, test")
    root = str(source) if source is not None else data.source
    if root == DIGITS:
        return ImageData(_digits_levels(split), DIGITS_LEVELS, f"digits ({split})")
    if root == MNIST:
        from lcssm.data.mnist import load_mnist

        images = load_mnist(split, cache_dir=data.cache_dir)[0]
        return ImageData(conform(images, data.shape[1], data.shape[0]), 256, f"MNIST-5k ({split}: {len(images)})")
    root = Path(root)
    ch, res = data.shape[0], data.shape[1]
    options = {"resolution": res, "channels": ch, "strict": data.strict, "cache_dir": data.cache_dir}
    if find_batch_dir(root) is not None:
        if split == "train":
            images = load_image_dataset(root, **options)
        else:
            images = conform(load_cifar10(root, "test")[0], res, ch)
        return ImageData(images, 256, f"CIFAR-10 {root} ({split})")
    images = load_image_dataset(root, **options)
    same = data.source != DIGITS and root.resolve() == Path(data.source).resolve()
    if split == "test" and not same:
        return ImageData(images, 256, f"image folder {root} (all {len(images)} images)")
    train_idx, test_idx = split_holdout(len(images), data.holdout, seed=_HOLDOUT_SEED)
    if split == "test" and len(test_idx) == 0:
        raise DataError(f"the run trained on every image of {root} (holdout=0): pass another folder to evaluate")
    idx = train_idx if split == "train" else test_idx
    return ImageData(images, 256, f"image folder {root} ({split}: {len(idx)} images)", torch.from_numpy(idx))


class ImageBatches:
    """``batch_fn`` for the trainer: epochs of permutations of the training levels (:func:`tensor_batches`),
    converted to float in the data scale and, with ``flip``, mirrored left-right with probability ½.

    The flips of step k come from a generator seeded from ``(seed, k)`` and are drawn for the global batch before
    it is split over ranks, so a batch is a pure function of the step (exact resume) and does not depend on the
    number of ranks.
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int, scale: str, flip: bool) -> None:
        self.data, self.batch_size, self.seed, self.scale, self.flip = data, batch_size, seed, scale, flip
        self._rows = tensor_batches(torch.arange(len(data)), batch_size, seed)  # batches of row numbers

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        levels = self.data.take(self._rows(step, rank, world_size))
        if self.flip:
            b = len(levels)
            u = torch.rand(self.batch_size, generator=make_generator(step_seed(self.seed, step, 0, _FLIP_STREAM)))
            mirrored = (u[rank * b:(rank + 1) * b] < 0.5).view(-1, *([1] * (levels.dim() - 1)))
            levels = torch.where(mirrored, levels.flip(-1), levels)
        return levels_to_float(levels, self.data.n_bins, self.scale)


def write_images(path: Path, samples: Tensor, scale: str) -> Tensor:
    """``samples.npz``-style file at ``path`` and its grid beside it (``.png``); returns the uint8 images."""
    from lcssm.files import atomic_save_npz
    from lcssm.plots import save_image_grid

    images = to_uint8(samples, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, images=images.numpy(), samples=samples.numpy().astype("float32"))
    save_image_grid(path.with_suffix(".png"), images[:256])
    return images


class ImagesKind:
    """Hooks of the ``images`` data kind (see :class:`lcssm.experiments.pipeline.DataKind`)."""

    samples_file = "samples.npz"
    samples_need_data = False  # image samples are scored by lcssm fid, against the split it loads

    def load(self, spec, split: str = "train") -> ImageData:
        return load_split(spec.data, split)

    def resolve(self, spec, data: ImageData):
        return dataclasses.replace(spec, data=dataclasses.replace(spec.data, n_bins=data.n_bins))

    def data_rms(self, spec, data: ImageData) -> float:
        """√(mean x²) of the training images in the data scale (EDM's σ_data), in float64 over chunks."""
        total, count = 0.0, 0
        for levels in data.chunks(1024):
            x = levels_to_float(levels, data.n_bins, spec.data.scale).double()
            total, count = total + float((x**2).sum()), count + x.numel()
        return (total / count) ** 0.5

    def data_sample(self, spec, data: ImageData, n: int, generator: torch.Generator) -> Tensor:
        """``n`` training images drawn without replacement (all of a smaller split) from ``generator``, in the data
        scale."""
        rows = torch.randperm(len(data), generator=generator)[:n]
        return levels_to_float(data.take(rows), data.n_bins, spec.data.scale)

    def batches(self, spec, data: ImageData) -> ImageBatches:
        return ImageBatches(data, spec.train.batch_size, spec.train.seed, spec.data.scale, spec.data.random_flip)

    def callbacks(self, spec, sde, out: Path) -> list:
        """A sample grid every ``grids.every`` steps (PC sampler, ``grids.steps`` steps)."""
        if spec.grids.every <= 0:
            return []
        from lcssm.plots import save_image_grid
        from lcssm.sampling.registry import draw

        sampler = dataclasses.replace(spec.sampler, name="pc", n_samples=spec.grids.n, n_steps=spec.grids.steps,
                                      seed=spec.train.seed, batch_size=0)

        def write_grid(step: int, ema) -> None:
            device = next(ema.parameters()).device
            samples, _ = draw(ema, sde, spec.data.shape, sampler, device=device)
            save_image_grid(out / "grids" / f"step_{step:07d}.png", to_uint8(samples, spec.data.scale))

        return [PeriodicCallback(spec.grids.every, write_grid)]

    def start_fn(self, spec, data):
        return None

    def save_samples(self, spec, samples: Tensor, path: Path) -> dict[str, str]:
        write_images(path, samples, spec.data.scale)
        return {"file": str(path), "grid": str(path.with_suffix(".png"))}

    def evaluate(self, spec, data, samples: Tensor) -> dict[str, Any]:
        return {}

    def figures(self, spec, data, samples: Tensor, path: Path, model=None) -> None:
        return None  # the grid is written with the samples

    def bpd(self, run, options) -> dict[str, Any]:
        """Bits/dim of held-out images under the run's probability-flow ODE: the run's test split, or the images in
        ``options.data`` (the first ``options.n``; all by default), dequantized uniformly (noise seeded with
        ``options.seed``); divergence by Hutchinson's estimate with one probe per image, or ``exact``."""
        from lcssm.metrics.likelihood import bits_per_dim

        trace = "rademacher" if options.trace == "auto" else options.trace
        if trace not in TRACES:
            raise ConfigError(f"unknown trace {options.trace!r}; valid: auto, {', '.join(TRACES)}")
        data = load_split(run.spec.data, "test", options.data)
        generator = make_generator(options.seed, run.device)
        values, nfes = [], []
        began = time.perf_counter()
        for chunk in data.chunks(options.batch_size, options.n):
            bpd, nfe = bits_per_dim(run.score_fn, run.sde, chunk.to(run.device), n_bins=data.n_bins,
                                    scale=run.spec.data.scale, generator=generator, rtol=options.rtol,
                                    atol=options.atol, t_min=options.t_min, exact_trace=trace == "exact",
                                    hutchinson="gaussian" if trace == "gaussian" else "rademacher",
                                    progress=options.progress)
            values.append(bpd.double().cpu())
            nfes.append(nfe)
        bpd = torch.cat(values)
        se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan
        return {"bpd": float(bpd.mean()), "bpd_se": se, "n": len(bpd), "n_bins": data.n_bins,
                "scale": run.spec.data.scale, "data": data.source, "seed": options.seed, "trace": trace,
                "t_min": options.t_min, "rtol": options.rtol, "atol": options.atol, "nfe": sum(nfes) / len(nfes),
                "nfe_per_batch": nfes, "non_finite": int((~torch.isfinite(bpd)).sum()),
                "seconds": time.perf_counter() - began}
