"""NCSNv2 score network (Song & Ermon, "Improved Techniques for Training Score-Based Generative Models",
NeurIPS 2020): a RefineNet with dilated residual blocks, unconditional normalisation and output s = f(x)/σ.

NCSNv2 is noise-conditional only through its output scaling (the paper's Technique 3): the network
f_θ(x) is unconditional and the score at noise level σ is ``f_θ(x) / σ``. So the call is
``model(x, sigma=sigma) -> score`` with sigma the (B,) noise standard deviation (or a scalar), *not* a time.
:class:`lcssm.models.precond.ScoreModel` passes the SDE's marginal std σ_t.

Architecture (ermongroup/ncsnv2 ``NCSNv2`` / ``NCSNv2Deeper`` / ``NCSNv2Deepest``, generalised): a 3x3
conv, then one *stage* per entry of ``ch_mult`` of two residual blocks each. Stage 0 keeps the resolution.
Every later stage starts with a transition block: with ``dilation == 1`` it halves the resolution
(conv + 2x2 mean pool), with ``dilation > 1`` it keeps it and uses dilated convolutions instead (so NCSNv2 at
32x32 has only one real downsampling). The decoder is a chain of RefineBlocks (RCU, multi-resolution
fusion, chained residual pooling), from the deepest stage up, then norm → act → 3x3 conv.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcssm.errors import ConfigError
from lcssm.models.layers import ACTIVATIONS, InstanceNormPlus2d, activation, num_groups

__all__ = ["NCSNv2", "NCSNv2Config"]

NORMS = ("instancenorm++", "instancenorm", "groupnorm")


@dataclass(frozen=True)
class NCSNv2Config:
    """Hyper-parameters of :class:`NCSNv2`.

    Attributes:
        in_channels: image channels C.
        image_size: training resolution (documentation and validation; the network is fully convolutional).
        nf: base width (ncsnv2 ``ngf``); stage i has ``nf * ch_mult[i]`` channels.
        ch_mult: channel multiplier per stage. NCSNv2 (CIFAR-10, CelebA): (1, 2, 2, 2); NCSNv2Deeper
            (LSUN): (1, 2, 2, 4, 4); NCSNv2Deepest (FFHQ): (1, 2, 2, 2, 4, 4).
        dilations: dilation per stage, same length as ``ch_mult``; a stage after the first downsamples iff
            its dilation is 1. NCSNv2: (1, 1, 2, 4); Deeper: (1, 1, 1, 2, 4); Deepest: (1, 1, 1, 1, 2, 4).
        norm: ``instancenorm++`` (NCSNv2's choice), ``instancenorm`` or ``groupnorm``.
        activation: ``elu`` (NCSNv2), ``silu`` or ``relu``.
        input_centered: True when data are in [-1, 1]; False maps [0, 1] inputs by 2x − 1 (as ncsnv2 does
            for its default, non-rescaled data).
    """

    in_channels: int = 3
    image_size: int = 32
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    norm: Literal["instancenorm++", "instancenorm", "groupnorm"] = "instancenorm++"
    activation: str = "elu"
    input_centered: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.norm not in NORMS:
            raise ConfigError(f"NCSNv2Config.norm={self.norm!r} is not valid; valid: {', '.join(NORMS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"NCSNv2Config.activation={self.activation!r} is not valid; valid: {', '.join(ACTIVATIONS)}"
            )
        for name in ("in_channels", "image_size", "nf"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"NCSNv2Config.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(f"NCSNv2Config.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult!r}")
        if len(self.dilations) != len(self.ch_mult) or min(self.dilations) < 1:
            raise ConfigError(
                f"NCSNv2Config.dilations={self.dilations!r} must hold one dilation >= 1 per stage "
                f"({len(self.ch_mult)} stages in ch_mult)"
            )
        if self.image_size % self.downsampling_factor:
            raise ConfigError(
                f"NCSNv2Config.image_size={self.image_size} is not divisible by the total downsampling "
                f"{self.downsampling_factor}"
            )

    @property
    def downsampling_factor(self) -> int:
        """H and W must be multiples of this: 2 per later stage with dilation 1."""
        return 2 ** sum(1 for d in self.dilations[1:] if d == 1)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm++":
        return InstanceNormPlus2d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.GroupNorm(num_groups(channels), channels)


def _conv3x3(c_in: int, c_out: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 conv, 'same' padding for any dilation, PyTorch's default init (as ncsnv2)."""
    return nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=bias)


class _ConvMeanPool(nn.Module):
    """Conv then 2x2 mean pooling (ncsnv2 ``ConvMeanPool``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class _ResidualBlock(nn.Module):
    """Pre-activation residual block ``shortcut(x) + conv(act(norm(conv(act(norm(x))))))``.

    ``transition`` blocks (the first of every later stage) either downsample (dilation 1: the second conv
    and the 1x1 shortcut are followed by mean pooling) or, with dilation > 1, keep the resolution with a
    dilated-conv shortcut, exactly as ncsnv2's ``ResidualBlock(resample='down', dilation=d)``.
    """

    def __init__(self, c_in: int, c_out: int, *, transition: bool, dilation: int, norm: str, act: str) -> None:
        super().__init__()
        self.act = activation(act)
        self.norm1 = _norm(norm, c_in)
        if transition and dilation == 1:
            self.conv1 = _conv3x3(c_in, c_in)
            self.norm2 = _norm(norm, c_in)
            self.conv2: nn.Module = _ConvMeanPool(c_in, c_out, 3)
            self.shortcut: nn.Module | None = _ConvMeanPool(c_in, c_out, 1)
        else:
            c_mid = c_in if transition else c_out
            self.conv1 = _conv3x3(c_in, c_mid, dilation)
            self.norm2 = _norm(norm, c_mid)
            self.conv2 = _conv3x3(c_mid, c_out, dilation)
            if transition or c_in != c_out:
                self.shortcut = _conv3x3(c_in, c_out, dilation) if dilation > 1 else nn.Conv2d(c_in, c_out, 1)
            else:
                self.shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class _RCU(nn.Module):
    """Residual conv units: ``n_blocks`` times ``x + conv(act(conv(act(x))))`` (bias-free convs)."""

    def __init__(self, channels: int, n_blocks: int, act: str, n_stages: int = 2) -> None:
        super().__init__()
        self.act = activation(act)
        self.blocks = nn.ModuleList(
            nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(n_stages)) for _ in range(n_blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        for convs in self.blocks:
            h = x
            for conv in cast(nn.ModuleList, convs):
                h = conv(self.act(h))
            x = x + h
        return x


class _MSF(nn.Module):
    """Multi-resolution fusion: 3x3 conv of each input, bilinear resize to the output size, sum."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, channels) for c in in_channels)

    def forward(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor:
        out: Tensor | None = None
        for conv, x in zip(self.convs, xs):
            h = F.interpolate(conv(x), size=size, mode="bilinear", align_corners=True)
            out = h if out is None else out + h
        assert out is not None, "_MSF fuses at least one input"
        return out


class _CRP(nn.Module):
    """Chained residual pooling: ``x = act(x)``, then n_stages of ``path = conv(maxpool5(path)); x += path``."""

    def __init__(self, channels: int, act: str, n_stages: int = 2) -> None:
        super().__init__()
        self.act = activation(act)
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(n_stages))

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, 5, stride=1, padding=2))
            x = x + path
        return x


class _RefineBlock(nn.Module):
    """RefineNet block: RCU(2) per input → MSF (if several inputs) → CRP → RCU (3 at the end, else 1)."""

    def __init__(self, in_channels: list[int], channels: int, act: str, *, end: bool = False) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(_RCU(c, 2, act) for c in in_channels)
        self.msf = _MSF(in_channels, channels) if len(in_channels) > 1 else None
        self.crp = _CRP(channels, act)
        self.out = _RCU(channels, 3 if end else 1, act)

    def forward(self, xs: list[Tensor], size: tuple[int, int]) -> Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt, xs)]
        h = self.msf(hs, size) if self.msf is not None else hs[0]
        return self.out(self.crp(h))


class NCSNv2(nn.Module):
    """NCSNv2 score network; ``forward(x, sigma)`` returns f_θ(x)/σ (see the module docstring)."""

    needs_sigma = True

    def __init__(self, config: NCSNv2Config) -> None:
        super().__init__()
        if not isinstance(config, NCSNv2Config):
            raise ConfigError(f"NCSNv2 expects an NCSNv2Config, got {type(config).__name__}")
        self.config = cfg = config
        widths = [cfg.nf * m for m in cfg.ch_mult]
        n = len(widths)
        self.begin_conv = nn.Conv2d(cfg.in_channels, cfg.nf, 3, padding=1)
        self.stages = nn.ModuleList()
        c = cfg.nf
        for i, (w, d) in enumerate(zip(widths, cfg.dilations)):
            self.stages.append(
                nn.ModuleList(
                    [
                        _ResidualBlock(c, w, transition=i > 0, dilation=d, norm=cfg.norm, act=cfg.activation),
                        _ResidualBlock(w, w, transition=False, dilation=d, norm=cfg.norm, act=cfg.activation),
                    ]
                )
            )
            c = w
        # refine[i] fuses stage i with the refinement from below; it outputs widths[i - 1] (widths[0] at i=0)
        refine = {n - 1: _RefineBlock([widths[-1]], widths[-1], cfg.activation, end=n == 1)}
        for i in range(n - 2, -1, -1):
            out_c = widths[i - 1] if i > 0 else widths[0]
            prev_c = widths[i]  # what refine[i + 1] produces
            refine[i] = _RefineBlock([widths[i], prev_c], out_c, cfg.activation, end=i == 0)
        self.refine = nn.ModuleList(refine[i] for i in range(n))
        self.end_norm = _norm(cfg.norm, cfg.nf)
        self.act = activation(cfg.activation)
        self.end_conv = nn.Conv2d(cfg.nf, cfg.in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | None = None, sigma: Tensor | float | None = None) -> Tensor:
        """Score ``f_θ(x) / σ`` at noise std sigma; x (B, C, H, W), sigma (B,) or a scalar. ``t`` is unused (the
        backbone contract of :mod:`lcssm.models.precond` passes it to every network)."""
        if sigma is None:
            raise ValueError("NCSNv2 needs sigma, the (B,) noise std: model(x, sigma=sigma)")
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"NCSNv2 expects x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        f = cfg.downsampling_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"NCSNv2 needs H and W divisible by {f}, got {x.shape[2]}x{x.shape[3]}")
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")

        h = x if cfg.input_centered else 2.0 * x - 1.0
        h = self.begin_conv(h)
        feats = []
        for stage in self.stages:
            for block in cast(nn.ModuleList, stage):
                h = block(h)
            feats.append(h)
        n = len(feats)
        ref = self.refine[n - 1]([feats[-1]], feats[-1].shape[2:])
        for i in range(n - 2, -1, -1):
            ref = self.refine[i]([feats[i], ref], feats[i].shape[2:])
        out = self.end_conv(self.act(self.end_norm(ref)))
        return out / sigma.to(out.dtype).view(-1, 1, 1, 1)
