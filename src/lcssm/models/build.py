"""The one network builder: :func:`build_model` makes any lcssm network, from a run spec's model section or from an
image preset / config; and parameter counts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lcssm.errors import ConfigError
from lcssm.models.ncsnv2 import NCSNv2, NCSNv2Config
from lcssm.models.presets import ModelConfig, ModelPreset, resolve_model_config
from lcssm.models.toy import EnergyMLP, ResidualScoreMLP, ScoreMLP
from lcssm.models.unet import UNet, UNetConfig

__all__ = ["build_model", "count_parameters", "count_preset_parameters"]

#: the image networks of a run spec's ``model.arch`` and their config classes
_IMAGE_NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),
    "ncsnv2": (NCSNv2, NCSNv2Config),
}


def build_model(
    model: str | ModelPreset | ModelConfig | Any,
    dim: int | None = None,
    *,
    time_conditional: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    nf: int | None = None,
) -> nn.Module:
    """The backbone network ``model`` describes, called as ``net(x, t, sigma)`` (each network uses what it needs).

    ``model`` is a run spec's model section (:class:`lcssm.experiments.spec.ModelSpec`: an MLP of data dimension
    ``dim``, time-conditional when ``time_conditional``, or an image network whose every hyper-parameter is in
    ``model.config``), or an image preset name / :class:`~lcssm.models.presets.ModelPreset` /
    :class:`~lcssm.models.unet.UNetConfig` / :class:`~lcssm.models.ncsnv2.NCSNv2Config`, optionally resized
    (``image_size``, ``channels``, ``nf``; see :func:`~lcssm.models.presets.resolve_model_config`). To count the
    parameters of a large preset without allocating it, build under ``torch.device("meta")``.
    """
    if hasattr(model, "arch"):
        return _from_spec(model, dim, time_conditional)
    cfg = resolve_model_config(model, image_size=image_size, channels=channels, nf=nf)
    return UNet(cfg) if isinstance(cfg, UNetConfig) else NCSNv2(cfg)


_MLP_ARCHS = ("energy_mlp", "res_mlp", "score_mlp")


def _from_spec(spec: Any, dim: int | None, time_conditional: bool) -> nn.Module:
    """The backbone of a run spec's ModelSpec."""
    if spec.arch in _MLP_ARCHS:
        if dim is None:
            raise ConfigError(f"model.arch={spec.arch!r} needs the data dimension dim")
        return _mlp_from_spec(spec, dim, time_conditional)
    cls, config_cls = _IMAGE_NETWORKS[spec.arch]
    try:
        config = config_cls(**spec.config)
    except TypeError as e:
        raise ConfigError(f"model.config does not fit {config_cls.__name__}: {e}") from None
    return cls(config)


def _mlp_from_spec(spec: Any, dim: int, time_conditional: bool) -> nn.Module:
    """The MLP backbone of a run spec's ModelSpec (an arch in ``_MLP_ARCHS``)."""
    if spec.arch == "energy_mlp":
        return EnergyMLP(dim=dim, hidden=spec.hidden, n_hidden=spec.n_hidden, activation=spec.activation)
    if spec.arch == "res_mlp":
        return ResidualScoreMLP(dim=dim, hidden=spec.hidden, n_blocks=spec.n_hidden, activation=spec.activation,
                                time_embed=spec.embedding, embed_dim=spec.embed_dim)
    # score_mlp
    return ScoreMLP(dim=dim, hidden=spec.hidden, n_hidden=spec.n_hidden, activation=spec.activation,
                    time_embed=spec.embedding if time_conditional else None, embed_dim=spec.embed_dim)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements (works on ``meta``-device models: no memory is touched)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_preset_parameters(name_or_config: str | ModelPreset | ModelConfig) -> int:
    """Trainable parameters of a preset/config at full size, counted on the meta device (no allocation)."""
    with torch.device("meta"):
        return count_parameters(build_model(name_or_config))
