"""Score-based diffusion on point data, end to end: the run configuration, training through
:func:`lcssm.diffusion.diffusion_loss` and the common trainer, sampling (PC sampler, probability-flow ODE, annealed
Langevin) with sample-quality metrics, and the probability-flow log-likelihood in bits/dim.

A run directory holds the trainer's files (``config.json`` with ``kind: "points"``, ``loss.csv``,
``metrics.jsonl``, ``checkpoints/``), ``samples.npy``, ``metrics.json`` (:mod:`lcssm.files`: a list of records
per kind, ``train``, ``sample`` and ``bpd``, one appended by each call) and the figures. ``lcssm train``,
``sample`` and ``bpd`` (:mod:`lcssm.cli.diffusion`) are thin wrappers over :func:`run_train`, :func:`run_sample`
and :func:`run_bpd`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lcssm.config import TrainConfig, apply_overrides, check_types, from_dict
from lcssm.errors import ConfigError
from lcssm.files import append_metrics
from lcssm.sampling import CORRECTORS, ODE_METHODS, PREDICTORS

SAMPLERS = ("pc", "ode", "ald")
TRACES = ("auto", "exact", "rademacher", "gaussian")


# ------------------------------------------------------------------------------------------------ configs
@dataclass
class SampleConfig:
    """How samples are drawn. ``n_steps``: predictor steps of ``pc``, noise levels of ``ald`` (geometric from
    ς_T to ς_eps, ς = σ_t/α_t, with ``ald_steps_each`` Langevin steps per level and NCSNv2's step size
    ``ald_step_size``; None = 0.1·ς_L²). ``rtol``/``atol``/``method``: the ``ode`` solver. ``eps``: last time.
    ``batch_size``: samples per sampler call (0 = all at once; the PC corrector's step uses batch means).
    ``snr`` is below score_sde's image value 0.16, which over-corrects on 2-D data with flat regions (checkerboard,
    2000 training steps: energy distance 0.12 with VE at snr 0.16 and 200 steps, 0.0015 at snr 0.05)."""

    sampler: str = "pc"
    n: int = 2000
    n_steps: int = 500
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.05
    n_corrector_steps: int = 1
    eps: float = 1e-3
    denoise: bool = True
    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "RK45"
    ald_steps_each: int = 5
    ald_step_size: float | None = None
    seed: int = 0
    batch_size: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        for name, valid in (("sampler", SAMPLERS), ("predictor", PREDICTORS), ("corrector", CORRECTORS),
                            ("method", ODE_METHODS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        checks = [
            (self.n >= 0, f"n must be >= 0, got {self.n}"),
            (self.n_steps >= 1, f"n_steps must be >= 1, got {self.n_steps}"),
            (self.snr > 0, f"snr must be > 0, got {self.snr}"),
            (self.n_corrector_steps >= 0, f"n_corrector_steps must be >= 0, got {self.n_corrector_steps}"),
            (0 < self.eps < 1, f"eps must lie in (0, 1), got {self.eps}"),
            (self.rtol > 0 and self.atol > 0, f"rtol and atol must be > 0, got {self.rtol}, {self.atol}"),
            (self.ald_steps_each >= 1, f"ald_steps_each must be >= 1, got {self.ald_steps_each}"),
            (self.ald_step_size is None or self.ald_step_size > 0,
             f"ald_step_size must be > 0, got {self.ald_step_size}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.batch_size >= 0, f"batch_size must be >= 0 (0 = one batch), got {self.batch_size}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


@dataclass
class DiffusionConfig:
    """Everything that defines a point-data diffusion run; saved as the run's config.json (``kind`` tells it
    from image runs).

    ``sigma_min``/``sigma_max`` (VE) and ``beta_min``/``beta_max`` (VP, subVP, tanh): None = the SDE's default.
    ``t_eps``: training times t ~ U(t_eps, T). ``sigma_s``/``n_sim_steps``: the ``simulated`` center.
    ``gamma``/``antithetic``/``n_noise``/``fd_eps``: objective options (``n_noise`` = LCSS noise draws or SSM/FD-SSM
    slices). ``dim`` is filled in from the data at training time.
    """

    kind: str = "points"
    data: str = "checkerboard"
    dim: int = 0
    sde: str = "vp"
    sigma_min: float | None = None
    sigma_max: float | None = None
    beta_min: float | None = None
    beta_max: float | None = None
    objective: str = "lcss"
    center: str = "marginal"
    weighting: str = "sigma2"
    t_eps: float = 1e-5
    sigma_s: float = 0.05
    n_sim_steps: int = 100
    gamma: float = 1.0
    antithetic: bool = False
    n_noise: int = 1
    fd_eps: float = 0.1
    hidden: int = 256
    n_hidden: int = 3
    activation: str = "silu"
    embedding: str = "sinusoidal"
    embed_dim: int = 64
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, batch_size=512, lr=2e-3, ema_decay=0.99, log_every=50))

    def __post_init__(self) -> None:
        from lcssm.diffusion import CENTERS, WEIGHTINGS
        from lcssm.objectives import get_objective

        check_types(self)
        if self.kind != "points":
            raise ConfigError(f"kind must be 'points' for a point-data run, got {self.kind!r}")
        get_objective(self.objective)
        for name, valid in (("center", CENTERS), ("weighting", WEIGHTINGS), ("embedding", ("sinusoidal", "fourier"))):
            if getattr(self, name) not in valid:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        sde = build_sde(self)
        if self.center == "simulated" and self.objective == "dsm":
            raise ConfigError("dsm needs the SDE's closed-form transition kernel, which center='simulated' does not "
                              "use; pick lcss (or ssm, ssm_vr, fdssm, exact_sm) with --center simulated")
        if self.center != "simulated" and not sde.has_marginal:
            raise ConfigError(f"SDE {self.sde!r} has no closed-form marginal; use --center simulated")
        checks = [
            (self.dim >= 0, f"dim must be >= 0, got {self.dim}"),
            (0 < self.t_eps < sde.T, f"t_eps must lie in (0, {sde.T}), got {self.t_eps}"),
            (self.sigma_s > 0, f"sigma_s must be > 0, got {self.sigma_s}"),
            (self.n_sim_steps >= 1, f"n_sim_steps must be >= 1, got {self.n_sim_steps}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (self.n_noise >= 1, f"n_noise must be >= 1, got {self.n_noise}"),
            (self.fd_eps > 0, f"fd_eps must be > 0, got {self.fd_eps}"),
            (self.hidden >= 1 and self.n_hidden >= 1, f"hidden and n_hidden must be >= 1, got {self.hidden}, "
             f"{self.n_hidden}"),
            (self.embed_dim >= 2, f"embed_dim must be >= 2, got {self.embed_dim}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.sample.sampler == "ald" and not sde.has_marginal:
            raise ConfigError(f"annealed Langevin needs the noise levels of a closed-form marginal, which SDE "
                              f"{self.sde!r} does not have; use --sampler pc or ode")


def build_sde(cfg: DiffusionConfig):
    from lcssm.sde import get_sde

    params = {k: getattr(cfg, k) for k in ("sigma_min", "sigma_max", "beta_min", "beta_max")
              if getattr(cfg, k) is not None}
    return get_sde(cfg.sde, **params)


def objective_kwargs(cfg: DiffusionConfig) -> dict[str, Any]:
    if cfg.objective == "lcss":
        return {"gamma": cfg.gamma, "antithetic": cfg.antithetic, "n_samples": cfg.n_noise}
    if cfg.objective == "fdssm":
        return {"fd_eps": cfg.fd_eps, "n_slices": cfg.n_noise}
    if cfg.objective in ("ssm", "ssm_vr"):
        return {"n_slices": cfg.n_noise}
    return {}


# ------------------------------------------------------------------------------------------ points kind
class PointScoreModel(nn.Module):
    """Time-conditional score ``s_θ(x, t)`` for point data: a :class:`~lcssm.models.ScoreMLP` with a time
    embedding, preconditioned like score_sde's networks.

    For SDEs with a closed-form marginal ``N(α_t x0, σ_t² I)``: the input is scaled by ``1/√(α_t² + σ_t²)`` (the
    std of x_t for unit-variance data; 1 for VP, ``1/√(1 + σ_t²)`` for VE) and the output is divided by σ_t
    (NCSN++'s ``scale_by_sigma`` for VE, the noise prediction ``−ε/σ_t`` of DDPM++ for VP/subVP), so the
    network's target ``σ_t·∇log p_t`` stays O(1) for every t and the ``sigma2``-weighted loss is well
    conditioned. Without a closed form (``simulated`` center) the network output is the score itself.
    """

    def __init__(self, sde, dim: int, hidden: int = 256, n_hidden: int = 3, activation: str = "silu",
                 embedding: str = "sinusoidal", embed_dim: int = 64) -> None:
        from lcssm.models import ScoreMLP

        super().__init__()
        self.sde = sde
        self.net = ScoreMLP(dim=dim, hidden=hidden, n_hidden=n_hidden, activation=activation, time_embed=embedding,
                            embed_dim=embed_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.sde.has_marginal:
            return self.net(x, t)
        alpha, sigma = self.sde.marginal_coefficients(t.to(x.dtype))
        c_in = torch.rsqrt(alpha**2 + sigma**2)
        return self.net(x * c_in[:, None], t) / sigma[:, None]


def build_model(cfg: DiffusionConfig) -> nn.Module:
    return PointScoreModel(build_sde(cfg), cfg.dim, cfg.hidden, cfg.n_hidden, cfg.activation, cfg.embedding,
                           cfg.embed_dim)


def data_source(spec: str):
    """A toy distribution (fresh draws) or a point file, with ``.dim``, ``.batches`` and ``.reference``."""
    from lcssm.experiments.toy import DataSource

    return DataSource(spec)


def write_figures(out: Path, cfg: DiffusionConfig, source, samples: Tensor) -> None:
    """samples.png next to the data, for 2-D data."""
    if samples.shape[1] != 2:
        return
    from lcssm.device import make_generator
    from lcssm.plots import bounds_of, plot_samples_2d

    ref = source.reference(20_000, make_generator(0))
    plot_samples_2d(out / "samples.png", samples, ref, bounds=bounds_of(ref),
                    title=f"{cfg.objective}/{cfg.sde} {cfg.sample.sampler} samples")


# ----------------------------------------------------------------------------------------------- running
def score_function(model: nn.Module, device: torch.device, amp: bool):
    """The model as ``score_fn(x, t)`` for the samplers (bf16 autocast on CUDA when ``amp``)."""
    from lcssm.device import autocast

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, amp):
            return model(x, t).to(x.dtype)

    return score_fn


def draw_samples(cfg: DiffusionConfig, model: nn.Module, device: torch.device, progress: bool
                 ) -> tuple[Tensor, dict]:
    """``cfg.sample.n`` samples of the model with ``cfg.sample``'s sampler, in batches of ``cfg.sample.batch_size``
    (0 = one batch) drawn from one generator; returns (samples on CPU, info with the NFE per batch)."""
    from lcssm.device import make_generator
    from lcssm.sampling import (
        annealed_langevin,
        geometric_sigmas,
        noise_conditional_score,
        noise_level,
        ode_sample,
        pc_sample,
    )

    sc, sde = cfg.sample, build_sde(cfg)
    score = score_function(model, device, cfg.train.amp)
    g = make_generator(sc.seed, device)
    sizes = [sc.n] if not sc.batch_size else [min(sc.batch_size, sc.n - i) for i in range(0, sc.n, sc.batch_size)]
    chunks, nfes = [], []
    start = time.perf_counter()
    for size in sizes:
        shape = (size, cfg.dim)
        if sc.sampler == "pc":
            x = pc_sample(score, sde, shape, n_steps=sc.n_steps, predictor=sc.predictor, corrector=sc.corrector,
                          snr=sc.snr, n_corrector_steps=sc.n_corrector_steps, denoise=sc.denoise, eps=sc.eps,
                          generator=g, device=device, progress=progress)
            per_step = (sc.predictor != "none") + (sc.corrector != "none") * sc.n_corrector_steps
            nfe = sc.n_steps * per_step + sc.denoise
        elif sc.sampler == "ode":
            x, nfe = ode_sample(score, sde, shape, rtol=sc.rtol, atol=sc.atol, method=sc.method,
                                denoise=sc.denoise, eps=sc.eps, generator=g, device=device, progress=progress)
            nfe += sc.denoise
        else:
            ends = noise_level(sde, torch.tensor([sde.T, sc.eps], dtype=torch.float64)).tolist()
            step = sc.ald_step_size if sc.ald_step_size is not None else 0.1 * ends[1] ** 2
            x0 = ends[0] * torch.randn(shape, generator=g, device=device)
            x = annealed_langevin(noise_conditional_score(score, sde), x0, geometric_sigmas(*ends, sc.n_steps),
                                  step_size=step, n_steps_each=sc.ald_steps_each, denoise=sc.denoise, generator=g,
                                  progress=progress)
            nfe = sc.n_steps * sc.ald_steps_each + sc.denoise
        chunks.append(x.float().cpu())
        nfes.append(int(nfe))
    seconds = time.perf_counter() - start
    return torch.cat(chunks), {"sampler": sc.sampler, "n": sc.n, "nfe": float(np.mean(nfes)), "seconds": seconds}


def evaluate_samples(samples: Tensor, source, seed: int) -> dict:
    """Energy distance to fresh data with its two-sample floor (and the checkerboard's in-support fraction)."""
    from lcssm.experiments.toy import sample_quality

    return sample_quality(samples, source.reference, seed, checkerboard=source.spec == "checkerboard")


def sample_and_save(cfg: DiffusionConfig, model: nn.Module, out: Path, device: torch.device, progress: bool,
                    samples_path: Path | None = None) -> dict:
    source = data_source(cfg.data)
    samples, info = draw_samples(cfg, model, device, progress)
    np.save(samples_path or out / "samples.npy", samples.numpy().astype(np.float32))
    info.update(evaluate_samples(samples, source, cfg.sample.seed))
    write_figures(out, cfg, source, samples)
    return info


def run_train(cfg: DiffusionConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict | None:
    """Train, then (if ``cfg.sample.n`` > 0) sample and evaluate; writes the trainer's files, metrics.json,
    loss.png, samples.npy and, for 2-D data, samples.png. Returns the metrics (None on non-zero ranks)."""
    from lcssm.device import resolve_device, seed_everything
    from lcssm.diffusion import diffusion_loss
    from lcssm.distributed import is_main_process
    from lcssm.plots import plot_losses
    from lcssm.train import train

    out = Path(out_dir)
    source = data_source(cfg.data)
    cfg = dataclasses.replace(cfg, dim=source.dim)
    sde = build_sde(cfg)
    seed_everything(cfg.train.seed)  # parameter initialisation
    model = build_model(cfg)
    kwargs = objective_kwargs(cfg)

    def loss_fn(net: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        return diffusion_loss(net, sde, x, objective=cfg.objective, center=cfg.center, weighting=cfg.weighting,
                              eps=cfg.t_eps, sigma_s=cfg.sigma_s, n_sim_steps=cfg.n_sim_steps, generator=generator,
                              **kwargs)

    result = train(model, loss_fn, source.batches(cfg.train.batch_size, cfg.train.seed), cfg.train, out,
                   resume=resume, overwrite=overwrite, run_config=dataclasses.asdict(cfg), progress=progress)
    if not is_main_process():
        return None
    metrics = {"train": {
        "objective": cfg.objective, "sde": cfg.sde, "center": cfg.center, "weighting": cfg.weighting,
        "data": cfg.data, "dim": cfg.dim, "steps": result.steps, "train_seconds": result.train_seconds,
        "final_loss": result.final_loss,
        "final_loss_avg100": float(np.mean(result.losses[-100:])) if result.losses else float("nan"),
    }}
    append_metrics(out, "train", metrics["train"])
    plot_losses(out / "loss.png", {cfg.objective: result.losses}, title=f"{cfg.objective} on {cfg.sde}")
    if cfg.sample.n > 0:
        device = resolve_device(cfg.train.device)
        metrics["sample"] = sample_and_save(cfg, result.ema_model.eval(), out, device, progress)
        append_metrics(out, "sample", metrics["sample"])
    return metrics


_FIELDS = frozenset(f.name for f in dataclasses.fields(DiffusionConfig))


def load_model(run_dir: Path, device: torch.device) -> tuple[DiffusionConfig, nn.Module]:
    """The run's config and its EMA model (eval mode) from the newest good checkpoint."""
    from lcssm.checkpoint import load_run

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    holder: dict[str, DiffusionConfig] = {}

    def factory(config: dict) -> nn.Module:
        holder["cfg"] = from_dict(DiffusionConfig, {k: v for k, v in config.items() if k in _FIELDS})
        return build_model(holder["cfg"])

    _, model = load_run(run_dir, factory, map_location=device)
    return holder["cfg"], model


def run_sample(run_dir: str | Path, overrides: list[str], *, device: str = "auto", progress: bool = True,
               samples_path: str | Path | None = None) -> dict:
    """Sample a trained run with its sample config updated by ``overrides`` (``key=value`` of SampleConfig)."""
    from lcssm.device import resolve_device

    out, dev = Path(run_dir), resolve_device(device)
    cfg, model = load_model(out, dev)
    cfg = apply_overrides(cfg, [f"sample.{o}" for o in overrides])
    if cfg.sample.n < 1:
        raise ConfigError(f"--n must be >= 1, got {cfg.sample.n}")
    info = sample_and_save(cfg, model, out, dev, progress, Path(samples_path) if samples_path else None)
    append_metrics(out, "sample", info)
    return info


def run_bpd(run_dir: str | Path, *, data: str | None = None, n: int = 1000, trace: str = "auto", batch: int = 500,
            eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, device: str = "auto",
            progress: bool = True) -> dict:
    """Probability-flow negative log-likelihood of ``n`` data points (the run's data unless ``data``), in nats
    per point and bits per dimension ``−log p / (d ln 2)`` (continuous data: no dequantization; it can be
    negative). ``trace``: exact divergence, a Hutchinson estimator, or ``auto`` (exact for d <= 16)."""
    from lcssm.device import make_generator, resolve_device
    from lcssm.likelihood import log_likelihood

    if trace not in TRACES:
        raise ConfigError(f"unknown trace {trace!r}; valid: {', '.join(TRACES)}")
    if n < 2 or batch < 1:
        raise ConfigError(f"--n must be >= 2 and --batch >= 1, got {n}, {batch}")
    out, dev = Path(run_dir), resolve_device(device)
    cfg, model = load_model(out, dev)
    spec = data or cfg.data
    source = data_source(spec)
    if source.dim != cfg.dim:
        raise ConfigError(f"data {spec!r} has dimension {source.dim}, the model {cfg.dim}")
    g = make_generator(seed)
    x = source.reference(n, g).to(dev)
    exact = trace == "exact" or (trace == "auto" and cfg.dim <= 16)
    sde = build_sde(cfg)
    score = score_function(model, dev, cfg.train.amp)
    start = time.perf_counter()
    logps, nfes = [], []
    for chunk in x.split(batch):
        logp, nfe = log_likelihood(score, sde, chunk, hutchinson="gaussian" if trace == "gaussian" else "rademacher",
                                   exact_trace=exact, eps=eps, rtol=rtol, atol=atol,
                                   generator=make_generator(seed + 1, dev), progress=progress)
        logps.append(logp.double().cpu())
        nfes.append(nfe)
    nll = -torch.cat(logps)
    to_bits = 1 / (cfg.dim * math.log(2))
    se = nll.std().item() / math.sqrt(len(nll))
    info = {
        "data": spec, "n": len(nll), "trace": "exact" if exact else trace, "eps": eps,
        "nll_nats": nll.mean().item(), "nll_nats_se": se,
        "bits_per_dim": nll.mean().item() * to_bits, "bits_per_dim_se": se * to_bits,
        "non_finite": int((~torch.isfinite(nll)).sum()), "nfe_mean": float(np.mean(nfes)),
        "seconds": time.perf_counter() - start,
    }
    append_metrics(out, "bpd", info)
    return info
