"""Density estimation on low-dimensional data (paper Sec. 4.2.1 / App. B): train an energy or score MLP with any
objective through the common trainer, sample with Langevin dynamics (Eq. 31), and measure the result."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lcssm.config import TrainConfig
from lcssm.data.toy import (
    TOY_DATASETS,
    checkerboard_in_support,
    checkerboard_in_support_ceiling,
    get_toy,
    load_points,
    smoothed,
)
from lcssm.device import make_generator, resolve_device, seed_everything
from lcssm.distributed import is_main_process
from lcssm.errors import ConfigError
from lcssm.files import atomic_write_text
from lcssm.metrics import energy_distance
from lcssm.models import EnergyMLP, ScoreMLP
from lcssm.objectives import NOISE_OBJECTIVES, get_objective
from lcssm.sampling import langevin
from lcssm.train import TrainResult, sampler_batches, tensor_batches, train

MODELS = ("energy", "score")
INITS = ("uniform", "gaussian")


@dataclass
class ToyConfig:
    """Everything that defines a toy run; saved as config.json. ``sigma`` is the LCSS/DSM noise scale (and the
    smoothing of the reference data the samples are compared with)."""

    data: str = "checkerboard"
    objective: str = "lcss"
    model: str = "energy"
    sigma: float = 0.1
    gamma: float = 1.0
    antithetic: bool = False
    n_noise: int = 1  # lcss n_samples / ssm, ssm_vr, fdssm n_slices
    fd_eps: float = 0.1
    hidden: int = 300
    activation: str = "silu"
    n_samples: int = 20_000
    langevin_steps: int = 1000
    langevin_step_size: float = 0.003  # well below σ² = 0.01, so ULA does not blur the σ-smoothed edges
    init: str = "uniform"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=1000, lr=1e-3, ema_decay=0.0, log_every=50))

    def __post_init__(self) -> None:
        get_objective(self.objective)
        checks = [
            (self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}"),
            (self.sigma > 0, f"sigma must be > 0, got {self.sigma}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (self.n_noise >= 1, f"n_noise must be >= 1, got {self.n_noise}"),
            (self.fd_eps > 0, f"fd_eps must be > 0, got {self.fd_eps}"),
            (self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (self.n_samples >= 2, f"n_samples must be >= 2, got {self.n_samples}"),
            (self.langevin_steps >= 0, f"langevin_steps must be >= 0, got {self.langevin_steps}"),
            (self.langevin_step_size > 0, f"langevin_step_size must be > 0, got {self.langevin_step_size}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


#: the quick default (about two minutes on 2 cores) and the paper's App. B setting
TOY_PRESETS: dict[str, ToyConfig] = {
    "quick": ToyConfig(),
    "paper": ToyConfig(
        langevin_step_size=0.1,
        langevin_steps=1000,
        train=TrainConfig(steps=20_000, batch_size=10_000, lr=1e-3, ema_decay=0.0, log_every=50),
    ),
}


def objective_kwargs(cfg: ToyConfig) -> dict:
    """Keyword arguments of the chosen objective from the run config."""
    if cfg.objective == "lcss":
        return {"sigma": cfg.sigma, "gamma": cfg.gamma, "antithetic": cfg.antithetic, "n_samples": cfg.n_noise}
    if cfg.objective == "dsm":
        return {"sigma": cfg.sigma}
    if cfg.objective == "fdssm":
        return {"eps": cfg.fd_eps, "n_slices": cfg.n_noise}
    if cfg.objective in ("ssm", "ssm_vr"):
        return {"n_slices": cfg.n_noise}
    return {}


def build_model(cfg: ToyConfig, dim: int) -> nn.Module:
    if cfg.model == "energy":
        return EnergyMLP(dim=dim, hidden=cfg.hidden, activation=cfg.activation)
    return ScoreMLP(dim=dim, hidden=cfg.hidden, activation=cfg.activation)


def make_loss(cfg: ToyConfig):
    """``loss_fn(model, batch, generator) -> (B,)`` for the trainer."""
    fn = get_objective(cfg.objective)
    kwargs = objective_kwargs(cfg)
    sigma = kwargs.pop("sigma", None)

    def loss_fn(model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        if cfg.objective in NOISE_OBJECTIVES:
            return fn(model, x, sigma, generator=generator, **kwargs)
        if cfg.objective == "exact_sm":
            return fn(model, x)
        return fn(model, x, generator=generator, **kwargs)

    return loss_fn


class DataSource:
    """A toy distribution (fresh draws every step) or a fixed point set (epochs of permutations)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        if spec in TOY_DATASETS:
            self.sampler = get_toy(spec)
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
        return tensor_batches(self.points, batch_size, seed)

    def reference(self, n: int, generator: torch.Generator) -> Tensor:
        """n points of the data distribution (fresh draws, or a resample of the point set)."""
        if self.sampler is not None:
            return self.sampler(n, generator)
        idx = torch.randint(0, len(self.points), (n,), generator=generator)
        return self.points[idx]

    def smoothed_reference(self, n: int, sigma: float, generator: torch.Generator) -> Tensor:
        return smoothed(self.reference, sigma)(n, generator)


def initial_points(cfg: ToyConfig, data: DataSource, generator: torch.Generator) -> Tensor:
    """Langevin start: uniform over the data's bounding box (App. B: uniform on [−4, 4]² for the checkerboard)."""
    ref = data.reference(10_000, generator)
    if cfg.init == "gaussian":
        return ref.mean(0) + ref.std(0) * torch.randn(cfg.n_samples, data.dim, generator=generator)
    lo, hi = ref.min(0).values, ref.max(0).values
    if data.spec == "checkerboard":
        lo, hi = torch.full((2,), -4.0), torch.full((2,), 4.0)
    return lo + (hi - lo) * torch.rand(cfg.n_samples, data.dim, generator=generator)


def sample_quality(samples: Tensor, reference: Callable[[int, torch.Generator], Tensor], seed: int, *,
                   checkerboard: bool = False, sigma: float | None = None) -> dict:
    """Energy distance between samples and fresh reference draws, with its two-sample floor (two independent
    reference sets of the same size); for the checkerboard also the in-support fraction and its ceiling at the
    reference's smoothing ``sigma`` (1 for unsmoothed data). Non-finite samples are counted and left out."""
    g = make_generator(seed + 1_000_003)
    finite = torch.isfinite(samples).all(1)
    n = min(int(finite.sum()), 5000)
    out: dict = {"n_samples": len(samples), "non_finite_samples": int((~finite).sum())}
    if n >= 2:
        ref_a, ref_b = reference(n, g), reference(n, g)
        out["energy_distance"] = energy_distance(samples[finite][:n], ref_a, generator=g)
        out["energy_distance_floor"] = energy_distance(ref_b, ref_a, generator=g)
    if checkerboard:
        out["in_support"] = float(checkerboard_in_support(samples).float().mean())
        out["in_support_ceiling"] = checkerboard_in_support_ceiling(sigma) if sigma else 1.0
    return out


def evaluate_samples(cfg: ToyConfig, data: DataSource, samples: Tensor, seed: int) -> dict:
    """:func:`sample_quality` against the σ-smoothed data the model was trained to match."""
    return sample_quality(samples, lambda n, g: data.smoothed_reference(n, cfg.sigma, g), seed,
                          checkerboard=data.spec == "checkerboard", sigma=cfg.sigma)


def run_toy(cfg: ToyConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
            progress: bool = True) -> dict | None:
    """Train, sample and evaluate; writes samples.npy, metrics.json, loss.csv (by the trainer) and PNGs.

    Returns the metrics dict (None on non-zero ranks under torchrun, which only train).
    """
    out = Path(out_dir)
    data = DataSource(cfg.data)
    seed_everything(cfg.train.seed)  # parameter initialisation
    model = build_model(cfg, data.dim)
    result: TrainResult = train(
        model, make_loss(cfg), data.batches(cfg.train.batch_size, cfg.train.seed), cfg.train, out,
        resume=resume, overwrite=overwrite, run_config={"command": "toy", **dataclasses.asdict(cfg)},
        progress=progress,
    )
    if not is_main_process():
        return None
    ema = result.ema_model.eval()
    device = resolve_device(cfg.train.device)
    g = make_generator(cfg.train.seed + 7)
    x0 = initial_points(cfg, data, g).to(device)
    start = time.perf_counter()
    samples = langevin(ema, x0, step_size=cfg.langevin_step_size, n_steps=cfg.langevin_steps,
                       generator=make_generator(cfg.train.seed + 11, device), progress=progress).cpu()
    sample_seconds = time.perf_counter() - start
    np.save(out / "samples.npy", samples.numpy().astype(np.float32))

    metrics = {
        "objective": cfg.objective,
        "data": cfg.data,
        "model": cfg.model,
        "sigma": cfg.sigma,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "sample_seconds": sample_seconds,
        "final_loss": result.final_loss,
        "final_loss_avg100": float(np.mean(result.losses[-100:])) if result.losses else float("nan"),
        **evaluate_samples(cfg, data, samples, cfg.train.seed),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if data.dim == 2:
        write_toy_figures(out, cfg, ema, data, samples, result.losses)
    return metrics


def write_toy_figures(out: Path, cfg: ToyConfig, model: nn.Module, data: DataSource, samples: Tensor,
                      losses: list[float]) -> None:
    from lcssm.plots import bounds_of, plot_density_2d, plot_losses, plot_samples_2d

    ref = data.reference(50_000, make_generator(0))
    bounds = (-4.5, 4.5, -4.5, 4.5) if cfg.data == "checkerboard" else bounds_of(ref)
    plot_samples_2d(out / "samples.png", samples, ref, bounds=bounds, title=f"{cfg.objective} samples")
    if isinstance(model, EnergyMLP):
        plot_density_2d(out / "density.png", model.log_density, bounds, title=f"{cfg.objective}: exp f")
    plot_losses(out / "loss.png", {cfg.objective: losses})
