"""Image score-based diffusion models (paper Sec. 5): train a preset network (NCSN++ / DDPM++ / NCSNv2, or the
CPU-sized ``digits`` and ``tiny`` U-Nets) with any objective through the common trainer, then sample, measure
bits/dim and FID/KID/IS from its run directory.

A run directory written by :func:`train_image` holds the trainer's files (``config.json``, ``loss.csv``,
``metrics.jsonl``, ``checkpoints/``) plus ``grids/step_XXXXXXX.png``, a sample grid every ``sample_every`` steps.
The evaluation functions add ``samples.npz`` / ``samples.png`` (:func:`sample_image_run`),
``fid_samples_{sampler}.npz`` (:func:`fid_image_run`) and append one record per call to ``metrics.json``
(``{"sample": [...], "bpd": [...], "fid": [...]}``).

Conventions:

- Data are integer grey levels ``k ∈ {0, …, n_bins − 1}`` (17 for the digits, 256 for image files and CIFAR-10),
  fed to the network as ``k/(n_bins − 1)`` in [0, 1] or ``2k/(n_bins − 1) − 1`` in [−1, 1] (the preset's
  ``data_scale``; NCSN++ VE and NCSNv2 centre [0, 1] inputs inside the network).
- The network is time-conditional through the marginal std σ_t of the SDE: ``UNet(x, t, sigma=σ_t)``,
  ``NCSNv2(x, σ_t)`` (NCSNv2 is trained continuously on the preset's VE σ range rather than on its discrete
  ladder; the annealed-Langevin sampler still walks a geometric ladder of ``num_scales`` levels).
- Bits/dim dequantize the levels uniformly into ``n_bins`` cells, ``(k + U)/n_bins`` (score_sde's convention
  for 8-bit data, whose training values are ``k/255``), with the cell-volume offset of the data scale
  (:func:`lcssm.likelihood.bits_per_dim`).
- FID/KID/IS are computed on the saved 8-bit images against the whole training split: the digits classifier's
  features for digits runs, FID Inception-v3 (a local weights file) otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lcssm.checkpoint import latest_good_checkpoint
from lcssm.config import TrainConfig, check_types, from_dict, to_jsonable
from lcssm.data.cifar10 import find_batch_dir, load_cifar10
from lcssm.data.digits import N_LEVELS as DIGITS_LEVELS
from lcssm.data.digits import load_digits
from lcssm.data.images import conform, load_image_dataset, split_holdout
from lcssm.data.transforms import check_channels
from lcssm.device import make_generator, resolve_device, seed_everything
from lcssm.diffusion import CENTERS, WEIGHTINGS, diffusion_loss
from lcssm.distributed import is_main_process
from lcssm.errors import CheckpointError, ConfigError, DataError
from lcssm.files import append_metrics
from lcssm.models import NCSNv2, build_model, count_parameters, get_preset
from lcssm.models.presets import ModelPreset, resolve_model_config
from lcssm.objectives import get_objective
from lcssm.sde import SDE, VESDE, ScoreFn, get_sde
from lcssm.train import PeriodicCallback, TrainResult, step_seed, tensor_batches, train

__all__ = [
    "SAMPLERS",
    "SAMPLER_OPTIONS",
    "TRACES",
    "ImageBatches",
    "ImageData",
    "ImageRun",
    "ImageRunConfig",
    "bpd_image_run",
    "build_image_model",
    "build_sde",
    "feature_extractor",
    "fid_image_run",
    "generate_samples",
    "image_quality",
    "is_image_run",
    "levels_to_float",
    "load_image_run",
    "load_split",
    "make_loss",
    "noise_conditional",
    "open_image_run",
    "preset_train_config",
    "sample_image_run",
    "sampler_settings",
    "save_image_grid",
    "score_model",
    "tile_images",
    "to_uint8",
    "train_image",
]

SAMPLERS = ("pc", "ode", "ald")
TRACES = ("rademacher", "gaussian", "exact")
RUN_KIND = "image"
_FLIP_STREAM = 4  # a random stream of step_seed the trainer does not use (0-3 are taken)
_ALD_STEP_LR = 2e-5  # NCSN's ε for σ_min = 0.01, for presets that do not set step_lr
_HOLDOUT_SEED = 0  # the held-out split of an image folder is a property of the folder, not of the run


# ------------------------------------------------------------------------------------------------ config
def preset_train_config(preset: str | ModelPreset) -> TrainConfig:
    """The trainer settings a preset was published with: steps = ``n_iters``, its batch, Adam settings, warmup,
    clipping and EMA rate. Checkpoints every quarter of the run, at most every 10k steps. Every parameter of the
    image networks takes part in the loss, so DDP skips its search for unused ones (``ddp_find_unused=False``)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    tr = p.training
    steps = int(tr["n_iters"])
    return TrainConfig(
        steps=steps, batch_size=int(tr["batch_size"]), lr=float(tr["lr"]), beta1=float(tr["beta1"]),
        adam_eps=float(tr["adam_eps"]), weight_decay=float(tr["weight_decay"]), warmup=int(tr["warmup"]),
        grad_clip=float(tr["grad_clip"] or 0.0), ema_decay=float(tr["ema_rate"]),
        ckpt_every=min(10_000, max(1, steps // 4)), log_every=min(100, max(1, steps // 100)), ddp_find_unused=False,
    )


@dataclass
class ImageRunConfig:
    """Everything that defines an image run; saved in ``config.json`` and in every checkpoint.

    ``None`` fields take the preset's value: ``weighting``, ``random_flip``, ``resolution`` (its image size),
    ``channels``, ``nf`` (base width) and ``train`` (:func:`preset_train_config`). ``data_dir`` is an image
    folder or a CIFAR-10 batch folder; it is required unless the preset trains on the digits (``digits``,
    ``tiny``), since nothing is downloaded. ``holdout`` is the fraction of an image folder kept out of training
    for bits/dim. ``strict`` makes an unreadable image file an error instead of a skip with a warning;
    ``cache_dir`` decodes an image folder once into a memory-mapped file there (for folders too large to hold in
    memory once per process; :class:`lcssm.data.images.ImageFolder`). ``n_noise`` is LCSS's noise samples / the
    SSM and FD-SSM slices per image. A sample grid of ``n_grid`` images (PC sampler, ``grid_steps`` steps) is
    written every ``sample_every`` steps (0 = never).
    """

    preset: str = "digits"
    objective: str = "lcss"
    center: str = "marginal"
    weighting: str | None = None
    gamma: float = 1.0
    antithetic: bool = False
    n_noise: int = 1
    data_dir: str | None = None
    resolution: int | None = None
    channels: int | None = None
    nf: int | None = None
    random_flip: bool | None = None
    holdout: float = 0.05
    strict: bool = False
    cache_dir: str | None = None
    sample_every: int = 1000
    n_grid: int = 64
    grid_steps: int = 100
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        check_types(self)
        preset = get_preset(self.preset)
        get_objective(self.objective)
        checks = [
            (self.center in CENTERS, f"center must be one of {', '.join(CENTERS)}, got {self.center!r}"),
            (self.weighting is None or self.weighting in WEIGHTINGS,
             f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (self.n_noise >= 1, f"n_noise must be >= 1, got {self.n_noise}"),
            (self.resolution is None or self.resolution >= 1, f"resolution must be >= 1, got {self.resolution}"),
            (self.nf is None or self.nf >= 1, f"nf must be >= 1, got {self.nf}"),
            (0 <= self.holdout < 1, f"holdout must lie in [0, 1), got {self.holdout}"),
            (self.sample_every >= 0, f"sample_every must be >= 0 (0 = no grids), got {self.sample_every}"),
            (self.n_grid >= 1, f"n_grid must be >= 1, got {self.n_grid}"),
            (self.grid_steps >= 1, f"grid_steps must be >= 1, got {self.grid_steps}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.channels is not None:
            try:
                check_channels(self.channels)
            except DataError as e:
                raise ConfigError(str(e)) from None
        dataset = preset.training["dataset"]
        if self.data_dir is None and dataset != "digits":
            raise ConfigError(
                f"preset {self.preset!r} trains on {dataset}, which lcssm never downloads: pass data_dir "
                "(--data-dir) pointing at an image folder or at the extracted cifar-10-batches-py folder")
        if self.data_dir is None and (self.resolution not in (None, 8) or self.channels not in (None, 1)):
            raise ConfigError(f"the digits are 1x8x8 images; resolution={self.resolution} and "
                              f"channels={self.channels} need an image folder (data_dir)")
        self.model_config()  # a resolution the network cannot take fails here, naming the field
        if self.train is None:
            self.train = preset_train_config(preset)

    # the preset's values wherever a field is None
    @property
    def model_preset(self) -> ModelPreset:
        return get_preset(self.preset)

    @property
    def image_size(self) -> int:
        return self.resolution or (8 if self.data_dir is None else int(self.model_preset.training["image_size"]))

    @property
    def image_channels(self) -> int:
        return self.channels or (1 if self.data_dir is None else int(self.model_preset.training["channels"]))

    @property
    def data_scale(self) -> str:
        return self.model_preset.training["data_scale"]

    @property
    def flip(self) -> bool:
        return bool(self.model_preset.training["random_flip"] if self.random_flip is None else self.random_flip)

    @property
    def loss_weighting(self) -> str:
        return self.weighting or self.model_preset.training["weighting"]

    def model_config(self):
        return resolve_model_config(self.preset, image_size=self.image_size, channels=self.image_channels,
                                    nf=self.nf)

    def objective_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the chosen objective (beyond the noise scale, which the SDE sets). FD-SSM keeps
        its default step ‖v‖ = 0.1: :func:`lcssm.diffusion.diffusion_loss` uses the name ``eps`` for its own
        smallest time, so the objective's ``eps`` cannot be passed through it."""
        if self.objective == "lcss":
            return {"gamma": self.gamma, "antithetic": self.antithetic, "n_samples": self.n_noise}
        if self.objective in ("ssm", "ssm_vr", "fdssm"):
            return {"n_slices": self.n_noise}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRunConfig:
        """Inverse of :meth:`to_dict` (e.g. a run's ``config.json``, less its ``command``/``kind`` keys)."""
        data = {k: v for k, v in data.items() if k not in ("command", "kind")}
        if isinstance(data.get("train"), dict):
            data["train"] = from_dict(TrainConfig, data["train"], prefix="train.")
        return from_dict(cls, data)


def build_sde(cfg: ImageRunConfig) -> SDE:
    """The preset's forward SDE (VE with its σ range; VP/subVP with its β range)."""
    tr = cfg.model_preset.training
    if tr["sde"] == "ve":
        return get_sde("ve", sigma_min=tr["sigma_min"], sigma_max=tr["sigma_max"])
    return get_sde(tr["sde"], beta_min=tr["beta_min"], beta_max=tr["beta_max"])


def build_image_model(cfg: ImageRunConfig) -> nn.Module:
    return build_model(cfg.model_config())


def score_model(net: nn.Module, sde: SDE, *, sigma_input: bool | None = None) -> ScoreFn:
    """Time-conditional score ``s(x, t)`` of a network conditioned on the marginal std σ_t of ``sde``.

    ``UNet(x, t, sigma=σ_t)`` (σ_t is used only when the U-Net embeds log σ or divides by it); NCSNv2 is
    noise-conditional only: ``NCSNv2(x, σ_t)``. ``sigma_input`` says which call the network takes (default:
    whether ``net`` is an NCSNv2); pass it when ``net`` is wrapped (DDP, torch.compile).
    """
    if sigma_input is None:
        sigma_input = isinstance(net, NCSNv2)

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        sigma = sde.marginal_coefficients(t)[1]
        return net(x, sigma) if sigma_input else net(x, t, sigma=sigma)

    return score_fn


def noise_conditional(score_fn: ScoreFn, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """``s(x, σ)`` of a VE run's score ``s(x, t)`` for annealed Langevin dynamics, which walks the preset's
    geometric σ ladder of a VE SDE (:func:`lcssm.sampling.noise_conditional_score` maps each σ to its time)."""
    if not isinstance(sde, VESDE):
        raise ConfigError(f"the annealed Langevin sampler (ald) needs a VE SDE run; this run uses {sde!r}: "
                          "use pc or ode")
    from lcssm.sampling import noise_conditional_score

    return noise_conditional_score(score_fn, sde)


# -------------------------------------------------------------------------------------------------- data
@dataclass
class ImageData:
    """One split of a run's data: integer grey levels (uint8), the number of levels and their origin.

    ``levels`` ``(M, C, R, R)`` holds the whole source, possibly memory-mapped, and ``index`` the rows of it in
    this split (None = all), so that a split of a folder too large for memory is never copied as a whole.
    """

    levels: Tensor
    n_bins: int
    source: str
    index: Tensor | None = None

    def __len__(self) -> int:
        return len(self.levels) if self.index is None else len(self.index)

    def take(self, rows: Tensor) -> Tensor:
        """The uint8 levels of rows ``rows`` (positions in this split)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.levels[rows if self.index is None else self.index[rows]]

    def chunks(self, size: int, n: int | None = None) -> Iterator[Tensor]:
        """The levels of the first ``n`` rows (all by default) in chunks of ``size``."""
        stop = len(self) if n is None else min(n, len(self))
        for i in range(0, stop, size):
            yield self.take(torch.arange(i, min(i + size, stop)))

    def uint8(self, levels: Tensor) -> Tensor:
        """Levels of this data as 8-bit pixels, as they would be saved (the levels themselves for 256 levels)."""
        return levels if self.n_bins == 256 else to_uint8(levels_to_float(levels, self.n_bins, "zero_one"),
                                                          "zero_one")

    def as_float(self, scale: str) -> Tensor:
        """The whole split as the network sees it (:func:`levels_to_float`; in memory)."""
        return levels_to_float(self.take(torch.arange(len(self))), self.n_bins, scale)

    def as_uint8(self) -> Tensor:
        """The whole split as 8-bit pixels (in memory: use :meth:`chunks` for large splits)."""
        return self.uint8(self.take(torch.arange(len(self))))


def levels_to_float(levels: Tensor, n_bins: int, scale: str) -> Tensor:
    """Levels ``k ∈ {0, …, n_bins − 1}`` -> float32 ``k/(n_bins − 1)`` (``zero_one``) or ``2k/(n_bins − 1) − 1``
    (``minus_one_one``). For 256 levels this is :func:`lcssm.data.transforms.to_float`."""
    x = levels.float() / (n_bins - 1)
    if scale == "zero_one":
        return x
    if scale == "minus_one_one":
        return 2.0 * x - 1.0
    raise DataError(f"unknown scale {scale!r}; valid: zero_one, minus_one_one")


def to_uint8(samples: Tensor, scale: str) -> Tensor:
    """Samples in the data scale -> 8-bit images (clamped to the data range, rounded to 256 levels)."""
    x = samples.detach().float()
    if scale == "minus_one_one":
        x = (x + 1.0) / 2.0
    elif scale != "zero_one":
        raise DataError(f"unknown scale {scale!r}; valid: zero_one, minus_one_one")
    x = torch.nan_to_num(x, nan=0.0)  # a diverged sample becomes a black image, not an error
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _digits_levels(split: str) -> Tensor:
    return torch.round(load_digits(split, scale="zero_one") * (DIGITS_LEVELS - 1)).to(torch.uint8)


def load_split(cfg: ImageRunConfig, split: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """The ``train`` or ``test`` split of a run's data, at the run's resolution and channels.

    Digits: lcssm's fixed split (1437 / 360). CIFAR-10 batches: ``data_batch_1..5`` / ``test_batch``. An image
    folder: the training folder's fixed held-out split (fraction ``cfg.holdout``); for ``test``, a ``data_dir``
    other than the training folder is held out as a whole. Image folders are read with the run's ``strict`` and
    ``cache_dir``.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; valid: train, test")
    root = data_dir if data_dir is not None else cfg.data_dir
    if root is None:
        return ImageData(_digits_levels(split), DIGITS_LEVELS, f"digits ({split})")
    root = Path(root)
    res, ch = cfg.image_size, cfg.image_channels
    options = {"resolution": res, "channels": ch, "strict": cfg.strict, "cache_dir": cfg.cache_dir}
    if find_batch_dir(root) is not None:
        if split == "train":
            images = load_image_dataset(root, **options)
        else:
            images = conform(load_cifar10(root, "test")[0], res, ch)
        return ImageData(images, 256, f"CIFAR-10 {root} ({split})")
    images = load_image_dataset(root, **options)
    same = cfg.data_dir is not None and root.resolve() == Path(cfg.data_dir).resolve()
    if split == "test" and not same:
        return ImageData(images, 256, f"image folder {root} (all {len(images)} images)")
    train_idx, test_idx = split_holdout(len(images), cfg.holdout, seed=_HOLDOUT_SEED)
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


# ------------------------------------------------------------------------------------------------ figures
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


# -------------------------------------------------------------------------------------------------- train
def make_loss(cfg: ImageRunConfig, sde: SDE, sigma_input: bool, eps: float = 1e-5):
    """``loss_fn(model, x0, generator) -> (per-sample loss, {"t": t})``: :func:`lcssm.diffusion.diffusion_loss`
    with the run's objective, center and weighting, divided by the dimension when the preset averages over it
    (score_sde's ``reduce_mean``)."""
    kwargs = cfg.objective_kwargs()
    reduce_mean = bool(cfg.model_preset.training["reduce_mean"])
    weighting = cfg.loss_weighting

    def loss_fn(model: nn.Module, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        t = eps + (sde.T - eps) * torch.rand(len(x0), generator=generator, device=x0.device, dtype=x0.dtype)
        loss = diffusion_loss(score_model(model, sde, sigma_input=sigma_input), sde, x0, objective=cfg.objective,
                              center=cfg.center, weighting=weighting, eps=eps, t=t, generator=generator, **kwargs)
        if reduce_mean:
            loss = loss / x0[0].numel()
        return loss, {"t": t}

    return loss_fn


def _sampling_eps(sde: SDE) -> float:
    """score_sde's end time of sampling: 1e-5 for VE, 1e-3 for VP/subVP."""
    return 1e-5 if isinstance(sde, VESDE) else 1e-3


def _grid_callback(cfg: ImageRunConfig, sde: SDE, out: Path) -> PeriodicCallback:
    def write_grid(step: int, ema: nn.Module) -> None:
        device = next(ema.parameters()).device
        samples, _ = _pc(cfg, sde, score_model(ema, sde), cfg.n_grid, n_steps=cfg.grid_steps,
                         settings=sampler_settings(cfg, sde), generator=make_generator(cfg.train.seed, device),
                         device=device, progress=False)
        save_image_grid(out / "grids" / f"step_{step:07d}.png", to_uint8(samples, cfg.data_scale))

    return PeriodicCallback(cfg.sample_every, write_grid)


def train_image(cfg: ImageRunConfig, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                progress: bool = True) -> TrainResult | None:
    """Train the run's network on its data; writes the trainer's files and sample grids under ``out_dir/grids``.

    Returns the :class:`~lcssm.train.TrainResult` (None on non-zero ranks under torchrun).
    """
    out = Path(out_dir)
    data = load_split(cfg, "train")
    sde = build_sde(cfg)
    seed_everything(cfg.train.seed)  # parameter initialisation
    model = build_image_model(cfg)
    if is_main_process():
        mc = cfg.model_config()
        print(f"lcssm train: preset {cfg.preset} ({type(model).__name__}, nf={mc.nf}), "
              f"{count_parameters(model):,} parameters; {len(data):,} training images "
              f"{cfg.image_channels}x{cfg.image_size}x{cfg.image_size} from {data.source}; {sde!r}; "
              f"objective {cfg.objective}", file=sys.stderr)
    callbacks = [_grid_callback(cfg, sde, out)] if cfg.sample_every > 0 else []
    result = train(
        model, make_loss(cfg, sde, isinstance(model, NCSNv2)),
        ImageBatches(data, cfg.train.batch_size, cfg.train.seed, cfg.data_scale, cfg.flip), cfg.train, out,
        resume=resume, overwrite=overwrite, callbacks=callbacks, progress=progress,
        run_config={"command": "train", "kind": RUN_KIND, **cfg.to_dict()},
    )
    return result if is_main_process() else None


# ----------------------------------------------------------------------------------------------- run dirs
@dataclass
class ImageRun:
    """A trained image run: its config, SDE, the EMA network (eval mode, frozen) and its score ``s(x, t)``."""

    cfg: ImageRunConfig
    sde: SDE
    score_fn: ScoreFn
    model: nn.Module
    step: int
    checkpoint: Path
    run_dir: Path
    device: torch.device


def _read_config(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None


def is_image_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` was written by :func:`train_image` (its ``config.json`` says so)."""
    config = _read_config(Path(run_dir))
    return isinstance(config, dict) and config.get("kind") == RUN_KIND


def open_image_run(run_dir: str | os.PathLike, device: str | torch.device = "auto") -> ImageRun:
    """Load an image run from its newest good checkpoint (falling back past corrupt ones).

    Raises CheckpointError when the directory or its checkpoints are missing or unusable, ConfigError when the
    run is not an image run.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    found = latest_good_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{str(run_dir)!r} holds no checkpoint (train it first, e.g. "
                              f"lcssm train --preset digits --out {run_dir})")
    path, state = found
    config = state.get("config") or {}
    if config.get("kind") != RUN_KIND:
        raise ConfigError(f"{str(run_dir)!r} is not an image run (its config has kind={config.get('kind')!r}); "
                          "image runs are trained with lcssm train --preset NAME")
    cfg = ImageRunConfig.from_dict(config)
    dev = resolve_device(device)
    model = build_image_model(cfg)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit the model built from its config: "
                              f"{' '.join(str(e).split())}") from None
    model.to(dev).eval().requires_grad_(False)
    sde = build_sde(cfg)
    return ImageRun(cfg, sde, score_model(model, sde), model, int(state["step"]), path, run_dir, dev)


def load_image_run(run_dir: str | os.PathLike, device: str | torch.device = "auto"
                   ) -> tuple[ImageRunConfig, SDE, ScoreFn, nn.Module]:
    """``(config, sde, score_fn(x, t), EMA model)`` of an image run's newest good checkpoint."""
    run = open_image_run(run_dir, device)
    return run.cfg, run.sde, run.score_fn, run.model


# ------------------------------------------------------------------------------------------------ sampling
SAMPLER_OPTIONS = ("predictor", "corrector", "snr", "n_corrector_steps", "denoise", "eps", "ald_steps_each",
                   "ald_step_size")


def sampler_settings(cfg: ImageRunConfig, sde: SDE, **overrides: Any) -> dict[str, Any]:
    """The preset's sampling settings, with ``overrides`` (None values keep the preset's).

    ``predictor``, ``corrector``, ``snr``, ``n_corrector_steps``: the PC sampler's (NCSNv2 presets, published with
    annealed Langevin dynamics, get score_sde's VE default: reverse diffusion + one Langevin step at snr 0.16).
    ``denoise``: final Tweedie step. ``eps``: the last time (score_sde: 1e-5 for VE, 1e-3 for VP/subVP).
    ``ald_steps_each``, ``ald_step_size``: annealed Langevin's steps per level and ε (NCSNv2's ``n_steps_each`` and
    ``step_lr``; 5 and 2e-5, NCSN's ε for σ_min = 0.01, where the preset has none).
    """
    unknown = sorted(set(overrides) - set(SAMPLER_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown sampler option(s) {', '.join(unknown)}; valid: {', '.join(SAMPLER_OPTIONS)}")
    s = cfg.model_preset.sampling
    ald = s["method"] == "annealed_langevin"
    if s["method"] == "pc":
        out = {"predictor": s["predictor"], "corrector": s["corrector"], "snr": float(s["snr"]),
               "n_corrector_steps": int(s["n_steps_each"]) if s["corrector"] != "none" else 0}
    else:
        out = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "n_corrector_steps": 1}
    out.update(denoise=bool(s["denoise"]), eps=_sampling_eps(sde), ald_steps_each=int(s["n_steps_each"]) if ald else 5,
               ald_step_size=float(s["step_lr"] or _ALD_STEP_LR))
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def _pc(cfg: ImageRunConfig, sde: SDE, score_fn: ScoreFn, n: int, *, n_steps: int, settings: dict[str, Any],
        generator: torch.Generator, device: torch.device, progress: bool) -> tuple[Tensor, int]:
    """PC samples and the score evaluations each took."""
    from lcssm.sampling import pc_sample

    shape = (n, cfg.image_channels, cfg.image_size, cfg.image_size)
    corr_steps = settings["n_corrector_steps"] if settings["corrector"] != "none" else 0
    x = pc_sample(score_fn, sde, shape, n_steps=n_steps, predictor=settings["predictor"],
                  corrector=settings["corrector"], snr=settings["snr"], n_corrector_steps=corr_steps,
                  denoise=settings["denoise"], eps=settings["eps"], generator=generator, device=device,
                  progress=progress)
    per_step = int(settings["predictor"] != "none") + corr_steps
    return x, n_steps * per_step + int(settings["denoise"])


def generate_samples(run: ImageRun, *, sampler: str = "pc", n: int = 64, batch_size: int = 500, seed: int = 0,
                     n_steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5, progress: bool = False,
                     **options: Any) -> tuple[Tensor, dict[str, Any]]:
    """``n`` samples (float, data scale, on CPU) of a run and ``{sampler, n, nfe, nfe_per_batch, seconds, ...}``.

    ``nfe`` is the number of score evaluations each sample went through (for ``ode``, the mean over batches).
    ``options`` override the preset's sampling settings (:func:`sampler_settings`).

    - ``pc``: predictor–corrector, ``n_steps`` (default: the preset's ``num_scales``) steps from T to ``eps``.
    - ``ode``: probability-flow ODE, RK45 at ``rtol``/``atol``, each batch one ODE (adaptive steps shared by its
      samples), from T to ``eps``.
    - ``ald``: annealed Langevin dynamics over ``n_steps`` (default ``num_scales``) geometric noise levels from
      σ_max to σ_min (VE runs only).

    Batches of ``batch_size`` share one generator seeded with ``seed``, so the samples depend on the batch size.
    """
    from lcssm.sampling import annealed_langevin, geometric_sigmas, ode_sample

    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if n_steps is not None and n_steps < 1:
        raise ConfigError(f"n_steps must be >= 1, got {n_steps}")
    cfg, sde, dev = run.cfg, run.sde, run.device
    settings = sampler_settings(cfg, sde, **options)
    steps = n_steps or int(cfg.model_preset.training["num_scales"])
    ald_score = noise_conditional(run.score_fn, sde) if sampler == "ald" else None
    generator = make_generator(seed, dev)
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    chunks, nfes = [], []
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        if sampler == "pc":
            x, nfe = _pc(cfg, sde, run.score_fn, b, n_steps=steps, settings=settings, generator=generator,
                         device=dev, progress=progress)
        elif sampler == "ode":
            x, nfe = ode_sample(run.score_fn, sde, (b, *shape), rtol=rtol, atol=atol, denoise=settings["denoise"],
                                eps=settings["eps"], generator=generator, device=dev, progress=progress)
            nfe += int(settings["denoise"])
        else:
            each = settings["ald_steps_each"]
            x0 = sde.prior_sample((b, *shape), generator=generator, device=dev)
            x = annealed_langevin(ald_score, x0, geometric_sigmas(sde.sigma_max, sde.sigma_min, steps),
                                  step_size=settings["ald_step_size"], n_steps_each=each,
                                  denoise=settings["denoise"], generator=generator, progress=progress)
            nfe = steps * each + int(settings["denoise"])
        chunks.append(x.float().cpu())
        nfes.append(nfe)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)
    used = {"pc": ("predictor", "corrector", "snr", "n_corrector_steps"), "ode": (),
            "ald": ("ald_steps_each", "ald_step_size")}[sampler]
    info = {"sampler": sampler, "n": n, "batch_size": batch_size, "seed": seed, "nfe": sum(nfes) / len(nfes),
            "nfe_per_batch": nfes, "seconds": seconds,
            "non_finite": int((~torch.isfinite(samples).flatten(1).all(1)).sum()),
            **{k: settings[k] for k in (*used, "denoise", "eps")}, "step": run.step,
            "checkpoint": run.checkpoint.name, "device": str(dev)}
    if sampler == "ode":
        info.update(rtol=rtol, atol=atol)
    else:
        info["n_steps"] = steps
    return samples, info


def _write_samples(path: Path, samples: Tensor, scale: str, ncol: int | None = None) -> Tensor:
    images = to_uint8(samples, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images.numpy(), samples=samples.numpy().astype(np.float32))
    save_image_grid(path.with_suffix(".png"), images[:256], ncol=ncol)
    return images


def sample_image_run(run_dir: str | os.PathLike, *, sampler: str = "pc", n: int = 64, batch_size: int = 500,
                     seed: int = 0, n_steps: int | None = None, out: str | os.PathLike | None = None,
                     device: str | torch.device = "auto", progress: bool = False, **sampler_kwargs) -> dict:
    """Sample a run (see :func:`generate_samples`) and write ``samples.npz`` (``images``: uint8 ``(n, C, H, W)``;
    ``samples``: float32 in the data scale) and ``samples.png`` (the first 256) in ``run_dir`` (or at ``out``,
    a ``.npz`` path), then append the record to ``metrics.json``. Returns the record."""
    run = open_image_run(run_dir, device)
    samples, info = generate_samples(run, sampler=sampler, n=n, batch_size=batch_size, seed=seed, n_steps=n_steps,
                                     progress=progress, **sampler_kwargs)
    path = Path(out) if out is not None else run.run_dir / "samples.npz"
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    _write_samples(path, samples, run.cfg.data_scale)
    info.update(file=str(path), grid=str(path.with_suffix(".png")))
    append_metrics(run.run_dir, "sample", info)
    return info


# ---------------------------------------------------------------------------------------------- bits/dim
def bpd_image_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, n: int | None = None,
                  seed: int = 0, batch_size: int = 500, rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                  trace: str = "rademacher", device: str | torch.device = "auto", progress: bool = False) -> dict:
    """Bits/dim of held-out images under the run's probability-flow ODE (:func:`lcssm.likelihood.bits_per_dim`).

    The images are the run's test split (:func:`load_split`), or ``data_dir``: the first ``n`` of them (all by
    default). Their levels are dequantized uniformly (noise seeded with ``seed``) into the data scale, and the
    offset is ``log2(n_bins/2)`` for [−1, 1] data, ``log2(n_bins)`` for [0, 1]. The ODE runs from ``eps`` to T
    (RK45, ``rtol``/``atol``); its divergence is Hutchinson's estimate with one ``rademacher`` or ``gaussian`` probe
    per image, or ``exact`` (d backward passes per evaluation). Returns ``{bpd, bpd_se, n, n_bins, nfe, seconds,
    ...}`` and appends it to ``metrics.json``.
    """
    from lcssm.likelihood import bits_per_dim

    if trace not in TRACES:
        raise ConfigError(f"unknown trace {trace!r}; valid: {', '.join(TRACES)}")
    run = open_image_run(run_dir, device)
    if n is not None and n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    data = load_split(run.cfg, "test", data_dir)
    generator = make_generator(seed, run.device)
    values, nfes = [], []
    start = time.perf_counter()
    for chunk in data.chunks(batch_size, n):
        bpd, nfe = bits_per_dim(run.score_fn, run.sde, chunk.to(run.device), n_bins=data.n_bins,
                                scale=run.cfg.data_scale, generator=generator, rtol=rtol, atol=atol, eps=eps,
                                exact_trace=trace == "exact", hutchinson="gaussian" if trace == "gaussian"
                                else "rademacher", progress=progress)
        values.append(bpd.double().cpu())
        nfes.append(nfe)
    bpd = torch.cat(values)
    se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan
    record = {"bpd": float(bpd.mean()), "bpd_se": se, "n": len(bpd), "n_bins": data.n_bins,
              "scale": run.cfg.data_scale, "data": data.source, "seed": seed, "trace": trace, "eps": eps, "rtol": rtol,
              "atol": atol, "nfe": sum(nfes) / len(nfes), "nfe_per_batch": nfes,
              "non_finite": int((~torch.isfinite(bpd)).sum()), "seconds": time.perf_counter() - start,
              "step": run.step, "checkpoint": run.checkpoint.name}
    append_metrics(run.run_dir, "bpd", record)
    return record


# ------------------------------------------------------------------------------------------ FID / KID / IS
FeatureFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def feature_extractor(cfg: ImageRunConfig, inception_path: str | os.PathLike | None = None,
                      device: str | torch.device = "auto") -> tuple[str, FeatureFn]:
    """``(name, fn)`` with ``fn(images in [−1, 1]) -> (features, class probabilities)``: the shipped digits
    classifier for 1x8x8 digits runs, else FID Inception-v3 from ``inception_path`` (or $LCSSM_INCEPTION_WEIGHTS);
    DataError naming the file and where to get it when the weights are missing."""
    from lcssm.features import digits_features, inception_features, load_digits_classifier, load_inception

    if cfg.data_dir is None:
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


def fid_image_run(run_dir: str | os.PathLike, *, n: int = 2000, sampler: str = "pc",
                  inception_path: str | os.PathLike | None = None, batch_size: int = 500, seed: int = 0,
                  n_steps: int | None = None, device: str | torch.device = "auto", progress: bool = False,
                  **sampler_kwargs) -> dict:
    """FID, KID and IS of ``n`` fresh samples against the run's whole training split.

    Digits runs use the digits classifier's 128-d features ("digits-FID"); other runs FID Inception-v3 pool3
    features, which need the weights file (``inception_path`` or $LCSSM_INCEPTION_WEIGHTS; checked before
    sampling). The samples are rounded to 8 bits first, as saved images are, and written to
    ``fid_samples_{sampler}.npz`` / ``.png``. Returns the record appended to ``metrics.json``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n must be an integer >= 2 (FID fits a covariance), got {n!r}")
    run = open_image_run(run_dir, device)
    name, features = feature_extractor(run.cfg, inception_path, run.device)
    reference = load_split(run.cfg, "train")
    samples, info = generate_samples(run, sampler=sampler, n=n, batch_size=batch_size, seed=seed, n_steps=n_steps,
                                     progress=progress, **sampler_kwargs)
    path = run.run_dir / f"fid_samples_{sampler}.npz"
    images = _write_samples(path, samples, run.cfg.data_scale)
    start = time.perf_counter()
    quality = image_quality(images, reference, features, seed=seed)
    info["sample_seconds"] = info.pop("seconds")
    record = {**quality, "features": name, "n_reference": len(reference), "reference": reference.source,
              **info, "metric_seconds": time.perf_counter() - start, "file": str(path)}
    append_metrics(run.run_dir, "fid", record)
    return record

