"""Named image-model presets: the paper's settings (LCSS, Osada et al. 2024, Sec. 5) with the architecture
hyper-parameters of the codebases it used (score_sde for NCSN++/DDPM++, ermongroup/ncsnv2 for NCSNv2),
plus two CPU-sized presets.

Each :class:`ModelPreset` holds the model config and a ``training`` dict for the trainer, with the same
keys in every preset:

- ``dataset``, ``image_size``, ``channels``, ``data_scale`` (``"zero_one"`` or ``"minus_one_one"``: the range
  the data loader feeds the network, lcssm.data's names), ``random_flip``;
- ``sde`` (``"ve"``, ``"vp"``, ``"subvp"``), ``continuous`` (False: NCSNv2's discrete geometric σ ladder),
  ``sigma_min``, ``sigma_max`` (VE, else None), ``beta_min``, ``beta_max`` (VP/subVP, else None),
  ``num_scales`` (score_sde's N, or NCSNv2's L), ``weighting`` (one of :data:`lcssm.diffusion.WEIGHTINGS`),
  ``reduce_mean``;
- ``lr``, ``beta1``, ``adam_eps``, ``weight_decay``, ``warmup`` (steps; 0 = none), ``grad_clip`` (None =
  none), ``ema_rate``, ``batch_size``, ``n_iters``;

and a ``sampling`` dict (``method``, ``predictor``, ``corrector``, ``snr``, ``n_steps_each``, ``step_lr``,
``denoise``), and ``c_out``, the output scaling of the run's :class:`~lcssm.models.precond.ScoreModel`
(``neg_inv_sigma`` for DDPM++, whose network predicts the noise: score = −output/σ_t, score_sde's
``get_score_fn`` for VP/subVP). Values were read from score_sde's and ncsnv2's config files field by field;
every remaining deviation is commented at its preset. ``lcssm import`` (:mod:`lcssm.models.convert`) loads the
published checkpoints of these networks into the presets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lcssm.errors import ConfigError
from lcssm.models.ncsnv2 import NCSNv2Config
from lcssm.models.unet import UNetConfig

__all__ = [
    "MODEL_PRESETS",
    "ModelConfig",
    "ModelPreset",
    "get_preset",
    "resolve_model_config",
]

ModelConfig = UNetConfig | NCSNv2Config
TRAINING_KEYS = (
    "dataset", "image_size", "channels", "data_scale", "random_flip",
    "sde", "continuous", "sigma_min", "sigma_max", "beta_min", "beta_max", "num_scales", "weighting", "reduce_mean",
    "lr", "beta1", "adam_eps", "weight_decay", "warmup", "lr_decay", "grad_clip", "ema_rate", "batch_size", "n_iters",
)  # fmt: skip
SAMPLING_KEYS = ("method", "predictor", "corrector", "snr", "n_steps_each", "step_lr", "denoise")


@dataclass(frozen=True)
class ModelPreset:
    """A named model config with the training and sampling settings it was published with."""

    name: str
    model: ModelConfig
    training: Mapping[str, Any]
    sampling: Mapping[str, Any]
    description: str
    source: str
    c_out: str = "none"
    #: the parametrisation a run of this preset gets by default (``lcssm train --precond``): ``score_sde`` for the
    #: published networks, ``edm`` for lcssm's own CPU presets (docs/DIGITS.md measures the two)
    precond: str = "score_sde"


def _training(**kw: Any) -> Mapping[str, Any]:
    base: dict[str, Any] = {
        "random_flip": True, "continuous": True, "sigma_min": None, "sigma_max": None, "beta_min": None,
        "beta_max": None, "num_scales": 1000, "weighting": "sigma2", "reduce_mean": False, "beta1": 0.9,
        "adam_eps": 1e-8, "weight_decay": 0.0, "warmup": 5000, "lr_decay": "none", "grad_clip": 1.0,
    }  # fmt: skip
    base.update(kw)
    missing = set(TRAINING_KEYS) - set(base)
    extra = set(base) - set(TRAINING_KEYS)
    if missing or extra:  # a typo in this file, not user input
        raise AssertionError(f"training dict: missing {sorted(missing)}, unknown {sorted(extra)}")
    return MappingProxyType({k: base[k] for k in TRAINING_KEYS})


def _sampling(**kw: Any) -> Mapping[str, Any]:
    base: dict[str, Any] = {
        "method": "pc",
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "snr": 0.16,
        "n_steps_each": 1,
        "step_lr": None,
        "denoise": True,
    }
    base.update(kw)
    if set(base) != set(SAMPLING_KEYS):
        raise AssertionError(f"sampling dict keys {sorted(base)} != {sorted(SAMPLING_KEYS)}")
    return MappingProxyType({k: base[k] for k in SAMPLING_KEYS})


def _ncsnv2_sampling(step_lr: float, n_steps_each: int) -> Mapping[str, Any]:
    return _sampling(
        method="annealed_langevin",
        predictor="none",
        corrector="langevin",
        snr=None,
        n_steps_each=n_steps_each,
        step_lr=step_lr,
    )


_SCORE_SDE = "github.com/yang-song/score_sde_pytorch"
_NCSNV2 = "github.com/ermongroup/ncsnv2"

_PRESETS = [
    ModelPreset(
        name="ncsnpp_deep_cifar10",
        # configs/ve/cifar10_ncsnpp_deep_continuous.py, every model field as published (FIR [1, 3, 3, 1] in
        # the BigGAN blocks and the residual input pyramid). No deviation.
        model=UNetConfig(
            in_channels=3,
            image_size=32,
            nf=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=8,
            attn_resolutions=(16,),
            dropout=0.1,
            resblock="biggan",
            skip_rescale=True,
            progressive="none",
            progressive_input="residual",
            fir=True,
            fir_kernel=(1, 3, 3, 1),
            embedding="fourier",
            embedding_input="log_sigma",
            fourier_scale=16.0,
            scale_by_sigma=True,
            input_centered=False,
            init_scale=0.0,
        ),
        training=_training(
            dataset="cifar10",
            image_size=32,
            channels=3,
            data_scale="zero_one",
            sde="ve",
            sigma_min=0.01,
            sigma_max=50.0,
            lr=2e-4,
            batch_size=128,
            # score_sde sets ema_rate 0.999 for this config (not 0.9999; two independent copies agree)
            ema_rate=0.999,
            n_iters=950_001,
        ),
        sampling=_sampling(predictor="reverse_diffusion", corrector="langevin", snr=0.16),
        description="NCSN++ cont. (deep), VE SDE, CIFAR-10 32x32 (LCSS paper Table 3)",
        source=f"{_SCORE_SDE} configs/ve/cifar10_ncsnpp_deep_continuous.py",
    ),
    ModelPreset(
        name="ddpmpp_deep_cifar10",
        # configs/subvp/cifar10_ddpmpp_deep_continuous.py (model.name 'ncsnpp' with DDPM++ settings): no FIR,
        # DDPM's sinusoidal embedding of 999·t, score = −output/σ_t (c_out). No deviation.
        model=UNetConfig(
            in_channels=3,
            image_size=32,
            nf=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=8,
            attn_resolutions=(16,),
            dropout=0.1,
            resblock="biggan",
            skip_rescale=True,
            progressive="none",
            progressive_input="none",
            fir=False,
            embedding="sinusoidal",
            embedding_input="t",
            time_scale=999.0,
            sinusoidal_spacing="ddpm",
            scale_by_sigma=False,
            input_centered=True,
            init_scale=0.0,
        ),
        training=_training(
            dataset="cifar10",
            image_size=32,
            channels=3,
            data_scale="minus_one_one",
            sde="subvp",
            beta_min=0.1,
            beta_max=20.0,
            reduce_mean=True,
            lr=2e-4,
            batch_size=128,
            ema_rate=0.9999,
            n_iters=950_001,
        ),
        sampling=_sampling(predictor="euler_maruyama", corrector="none"),
        description="DDPM++ cont. (deep), sub-VP SDE, CIFAR-10 32x32 (LCSS paper Table 3)",
        source=f"{_SCORE_SDE} configs/subvp/cifar10_ddpmpp_deep_continuous.py",
        c_out="neg_inv_sigma",
    ),
    ModelPreset(
        name="ncsnpp_celebahq1024",
        # configs/ve/celebahq_ncsnpp_continuous.py, every model field as published (FIR in the BigGAN blocks,
        # the input_skip and the output_skip pyramids). Deviation: batch size (below).
        model=UNetConfig(
            in_channels=3,
            image_size=1024,
            nf=16,
            ch_mult=(1, 2, 4, 8, 16, 32, 32, 32),
            num_res_blocks=1,
            attn_resolutions=(16,),
            dropout=0.0,
            resblock="biggan",
            skip_rescale=True,
            progressive="output_skip",
            progressive_input="input_skip",
            fir=True,
            fir_kernel=(1, 3, 3, 1),
            embedding="fourier",
            embedding_input="log_sigma",
            fourier_scale=16.0,
            scale_by_sigma=True,
            input_centered=False,
            init_scale=0.0,
        ),
        training=_training(
            dataset="celebahq",
            image_size=1024,
            channels=3,
            data_scale="zero_one",
            sde="ve",
            sigma_min=0.01,
            sigma_max=1348.0,
            num_scales=2000,
            lr=2e-4,
            ema_rate=0.9999,
            n_iters=2_400_001,
            # the LCSS paper trains with batch 16 (Sec. 5.3); score_sde's config uses 8
            batch_size=16,
        ),
        sampling=_sampling(predictor="reverse_diffusion", corrector="langevin", snr=0.15),
        description="NCSN++, VE SDE, CelebA-HQ 1024x1024 (LCSS paper Fig. 1, 10)",
        source=f"{_SCORE_SDE} configs/ve/celebahq_ncsnpp_continuous.py",
    ),
    ModelPreset(
        name="ncsnv2_cifar10",
        # ncsnv2's NCSNv2 module for module (lcssm import ncsnv2 loads its checkpoints). Model: no deviation.
        model=NCSNv2Config(in_channels=3, image_size=32, nf=128, ch_mult=(1, 2, 2, 2), dilations=(1, 1, 2, 4)),
        training=_training(
            dataset="cifar10",
            image_size=32,
            channels=3,
            data_scale="zero_one",
            sde="ve",
            continuous=False,
            sigma_min=0.01,
            sigma_max=50.0,
            num_scales=232,
            lr=1e-4,
            warmup=0,
            grad_clip=None,
            ema_rate=0.999,
            batch_size=128,
            n_iters=300_001,
        ),
        sampling=_ncsnv2_sampling(step_lr=6.2e-6, n_steps_each=5),
        description="NCSNv2, CIFAR-10 32x32 (LCSS paper Fig. 2)",
        source=f"{_NCSNV2} configs/cifar10.yml, models/ncsnv2.py NCSNv2",
    ),
    ModelPreset(
        name="ncsnv2_celeba",
        # ncsnv2's NCSNv2 module for module. Model: no deviation.
        model=NCSNv2Config(in_channels=3, image_size=64, nf=128, ch_mult=(1, 2, 2, 2), dilations=(1, 1, 2, 4)),
        training=_training(
            dataset="celeba",
            image_size=64,
            channels=3,
            data_scale="zero_one",
            sde="ve",
            continuous=False,
            sigma_min=0.01,
            sigma_max=90.0,
            num_scales=500,
            lr=1e-4,
            warmup=0,
            grad_clip=None,
            ema_rate=0.999,
            batch_size=128,
            n_iters=210_001,
        ),
        sampling=_ncsnv2_sampling(step_lr=3.3e-6, n_steps_each=5),
        description="NCSNv2, CelebA 64x64 (LCSS paper Fig. 3)",
        source=f"{_NCSNV2} configs/celeba.yml, models/ncsnv2.py NCSNv2",
    ),
    ModelPreset(
        name="ncsnv2_ffhq256",
        # ncsnv2's NCSNv2Deepest module for module. Deviations: batch size and steps (below).
        model=NCSNv2Config(
            in_channels=3, image_size=256, nf=128, ch_mult=(1, 2, 2, 2, 4, 4), dilations=(1, 1, 1, 1, 2, 4)
        ),
        training=_training(
            dataset="ffhq",
            image_size=256,
            channels=3,
            data_scale="zero_one",
            sde="ve",
            continuous=False,
            sigma_min=0.01,
            sigma_max=348.0,
            num_scales=2311,
            lr=1e-4,
            adam_eps=1e-3,
            warmup=0,
            grad_clip=None,
            ema_rate=0.999,
            # the LCSS paper trains FFHQ/AFHQ 256 for 600k steps at batch 16 (Sec. 5.2, Fig. 4);
            # ncsnv2's ffhq.yml uses batch 32 for 80k steps
            batch_size=16,
            n_iters=600_000,
        ),
        sampling=_ncsnv2_sampling(step_lr=9e-7, n_steps_each=3),
        description="NCSNv2 (Deepest), FFHQ 256x256 (LCSS paper Fig. 4, 7, Table 2)",
        source=f"{_NCSNV2} configs/ffhq.yml, models/ncsnv2.py NCSNv2Deepest",
    ),
    ModelPreset(
        name="digits",
        # A real but small NCSN++-style VE network for sklearn's 8x8 digits on a CPU. sigma_max = 10 is just
        # above the largest pairwise distance of the [-1, 1]-scaled training digits (9.6), Song & Ermon's
        # Technique 1. Optimiser settings are sensible defaults, not tuned values.
        model=UNetConfig(
            in_channels=1,
            image_size=8,
            nf=32,
            ch_mult=(1, 2),
            num_res_blocks=2,
            attn_resolutions=(4,),
            dropout=0.0,
            resblock="biggan",
            skip_rescale=True,
            embedding="fourier",
            embedding_input="log_sigma",
            fourier_scale=16.0,
            scale_by_sigma=True,
            input_centered=True,
            init_scale=0.0,
        ),
        training=_training(
            dataset="digits",
            image_size=8,
            channels=1,
            data_scale="minus_one_one",
            random_flip=False,
            sde="ve",
            sigma_min=0.01,
            sigma_max=10.0,
            lr=1e-3,
            warmup=100,
            # 0.9975 (= 1 - 10/steps) measured better than 0.999 at these 4,000 steps (docs/DIGITS.md: Heun-35
            # digits-FID 3.08 against 4.61), as on mnist. --lr 2e-3 --lr-decay cosine improves Heun-35 but worsens
            # PC and ancestral Euler (docs/DIGITS.md), so the preset keeps a constant lr
            ema_rate=0.9975,
            batch_size=128,
            n_iters=4000,
        ),
        sampling=_sampling(predictor="reverse_diffusion", corrector="langevin", snr=0.16),
        description="small NCSN++-style U-Net for 8x8 digits, VE SDE (CPU: a few thousand steps)",
        source="lcssm",
        precond="edm",
    ),
    ModelPreset(
        name="tiny",
        # For tests: every U-Net path at minimal width. init_scale=1 so the output (and its derivatives)
        # is non-zero at initialisation; callers need no sigma.
        model=UNetConfig(
            in_channels=1,
            image_size=8,
            nf=8,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
            resblock="biggan",
            embedding="sinusoidal",
            embedding_input="t",
            scale_by_sigma=False,
            input_centered=True,
            init_scale=1.0,
        ),
        training=_training(
            dataset="digits",
            image_size=8,
            channels=1,
            data_scale="minus_one_one",
            random_flip=False,
            sde="vp",
            beta_min=0.1,
            beta_max=20.0,
            lr=1e-3,
            warmup=0,
            ema_rate=0.99,
            batch_size=16,
            n_iters=50,
        ),
        sampling=_sampling(predictor="euler_maruyama", corrector="none"),
        description="minimal U-Net for tests (forward + double backward well under a second)",
        source="lcssm",
        precond="edm",
    ),
    ModelPreset(
        name="mnist",
        # NCSN++-style VE U-Net for MNIST-5k (28x28) sized for 2 CPU cores (docs/MNIST.md). sigma_max = 32 is just
        # above the largest pairwise distance of the [-1, 1]-scaled training digits (31.7), Song & Ermon's
        # Technique 1. ema_rate 0.9975 (= 1 - 10/steps) measured better than 0.999 and than no EMA at these 4,000 steps
        # (docs/MNIST.md: Heun-35 FID 41.8 against 62.9 and 46.0); the other optimiser settings are not tuned.
        model=UNetConfig(in_channels=1, image_size=28, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                         attn_resolutions=(7,), dropout=0.0, resblock="biggan", skip_rescale=True,
                         embedding="fourier", embedding_input="log_sigma", fourier_scale=16.0, scale_by_sigma=True,
                         input_centered=True, init_scale=0.0),
        training=_training(dataset="mnist", image_size=28, channels=1, data_scale="minus_one_one",
                           random_flip=False, sde="ve", sigma_min=0.01, sigma_max=32.0, lr=2e-3, warmup=100,
                           ema_rate=0.9975, batch_size=64, n_iters=4000),
        sampling=_sampling(predictor="reverse_diffusion", corrector="langevin", snr=0.16),
        description="small NCSN++-style U-Net for MNIST-5k 28x28, VE SDE (CPU: 22 minutes on 2 cores)",
        source="lcssm",
        precond="edm",
    ),
]

MODEL_PRESETS: dict[str, ModelPreset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; valid: {', '.join(MODEL_PRESETS)}") from None


def resolve_model_config(
    name_or_config: str | ModelPreset | ModelConfig,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    nf: int | None = None,
) -> ModelConfig:
    """The model config of a preset name / preset / config, with optional overrides.

    ``channels`` overrides the image channels (``in_channels``), ``nf`` the base width. Changing
    ``image_size`` keeps U-Net attention at the same absolute resolutions, which must exist at the new size.
    """
    if isinstance(name_or_config, str):
        cfg: ModelConfig = get_preset(name_or_config).model
    elif isinstance(name_or_config, ModelPreset):
        cfg = name_or_config.model
    elif isinstance(name_or_config, UNetConfig | NCSNv2Config):
        cfg = name_or_config
    else:
        raise ConfigError(
            f"expected a preset name, ModelPreset, UNetConfig or NCSNv2Config, got {type(name_or_config).__name__}"
        )
    # Any: mypy checks replace()'s keywords field by field and cannot see which fields these keys name (all ints)
    overrides: dict[str, Any] = {
        k: v for k, v in (("image_size", image_size), ("in_channels", channels), ("nf", nf)) if v is not None
    }
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
