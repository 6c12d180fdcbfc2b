"""Time-conditional U-Net score network of the NCSN++ / DDPM++ family (Song et al., ICLR 2021, App. H).

One implementation configured by :class:`UNetConfig`; "deep" variants are more residual blocks per
resolution. Compared with score_sde's ``ncsnpp.py`` this keeps: BigGAN-style residual blocks (resampling
inside the block) or DDPM-style blocks with separate (conv) resamplers, skip rescaling by 1/√2, attention at
chosen resolutions and in the middle, progressive input (``input_skip`` / ``residual``) and output
(``output_skip``) pyramids, Gaussian-Fourier or sinusoidal time embeddings, and resampling by 2x2 average
pooling / nearest neighbour (score_sde's ``fir=False``) or by the FIR filter ``fir_kernel`` (``fir=True``, StyleGAN2's
upfirdn2d, :func:`lcssm.models.layers.upfirdn2d`). Parameter counts equal score_sde's for the same settings.

Saved configs keep their meaning: every field added later defaults to the behaviour from before it existed
(``fir=False``, ``sinusoidal_spacing="half"``), and the presets set the published values.

Call contract: ``model(x, t, sigma=None) -> score`` with x (B, C, H, W), t (B,) continuous SDE time in
[0, 1] and sigma (B,) the marginal standard deviation σ(t) of the perturbation kernel. sigma is required
exactly when :attr:`UNet.needs_sigma` is true: with ``scale_by_sigma`` (the output is divided by σ, so the
network predicts −z for x = x₀ + σz, NCSN++'s VE parametrisation) or with ``embedding_input="log_sigma"``
(the embedding is of log σ, as score_sde does for VE). A caller holding an SDE writes
``model(x, t, sigma=sde.marginal_coefficients(t)[1])``; :class:`lcssm.models.precond.ScoreModel` does that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal, cast

import torch
from torch import Tensor, nn

from lcssm.errors import ConfigError
from lcssm.models.embeddings import GaussianFourierEmbedding, sinusoidal_embedding
from lcssm.models.layers import (
    ACTIVATIONS,
    ATTENTION_IMPLS,
    AttentionImpl,
    OutputHead,
    Resample,
    ResBlock,
    SelfAttention2d,
    activation,
    conv1x1,
    conv3x3,
    downsample2x,
    linear,
    upsample2x,
)

__all__ = ["UNet", "UNetConfig"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "resblock": ("biggan", "ddpm"),
    "embedding": ("fourier", "sinusoidal"),
    "embedding_input": ("t", "log_sigma"),
    "sinusoidal_spacing": ("half", "ddpm"),
    "progressive": ("none", "output_skip"),
    "progressive_input": ("none", "input_skip", "residual"),
    "attention_impl": ATTENTION_IMPLS,
    "activation": tuple(ACTIVATIONS),
}


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (names follow score_sde's ``config.model`` where one exists).

    Attributes:
        in_channels: image channels C (input and output).
        image_size: training resolution; fixes where ``attn_resolutions`` fall. The network is fully
            convolutional and runs at any H, W divisible by ``2 ** (len(ch_mult) - 1)``, with attention at
            the same levels as at ``image_size``.
        nf: base width (score_sde ``nf``); level i has ``nf * ch_mult[i]`` channels.
        ch_mult: channel multiplier per resolution level, highest resolution first.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (at ``image_size``) with self-attention; the middle always has one
            when ``mid_attention``.
        dropout: dropout inside residual blocks.
        resblock: ``"biggan"`` (resampling inside residual blocks, NCSN++/DDPM++) or ``"ddpm"``
            (separate resampling layers, conv-based when ``resample_with_conv``).
        resample_with_conv: DDPM-style blocks only: 3x3 conv after up/down sampling.
        skip_rescale: divide residual sums by √2.
        progressive: ``"output_skip"`` sums per-level RGB outputs (upsampled) into the result.
        progressive_input: ``"input_skip"`` adds the (downsampled) input image at every level through a 1x1
            conv; ``"residual"`` carries a strided-conv pyramid of the input (NCSN++ CIFAR-10).
        fir: resample with the FIR filter ``fir_kernel`` (score_sde ``fir``) in the BigGAN blocks (both paths),
            the DDPM-style resamplers and both pyramids; False: average pooling / nearest neighbour.
        fir_kernel: the 1-D FIR kernel (score_sde's ``[1, 3, 3, 1]``).
        embedding: ``"fourier"`` (Gaussian random features, NCSN++) or ``"sinusoidal"`` (DDPM++).
        embedding_input: what is embedded: ``"t"`` (times ``time_scale`` for sinusoidal) or
            ``"log_sigma"`` (score_sde's VE choice; needs sigma at call time).
        fourier_scale: std of the Fourier frequencies (16 in NCSN++).
        time_scale: sinusoidal embedding of ``time_scale * t`` (score_sde feeds 999·t for continuous VP).
        sinusoidal_spacing: frequencies of the sinusoidal embedding of width d, half = d/2:
            ``"ddpm"``: exp(−ln(10⁴)·k/(half−1)) (Ho et al. 2020; score_sde ``get_timestep_embedding``);
            ``"half"``: exp(−ln(10⁴)·k/half) (lcssm's choice before the DDPM spacing existed; kept as the default
            so saved runs keep their meaning).
        time_conditional: False drops the embedding (an unconditional score network s(x)); t is ignored.
        scale_by_sigma: divide the output by sigma (needs sigma at call time).
        input_centered: True when data are already in [-1, 1]; False maps [0, 1] inputs by 2x − 1 first.
        activation: nonlinearity (``silu`` = swish in NCSN++/DDPM++).
        num_heads: attention heads (1 in score_sde).
        attention_impl: ``"math"`` (twice differentiable) or ``"sdpa"`` (first-order only), see
            :class:`~lcssm.models.layers.SelfAttention2d`.
        init_scale: initial scale of the last conv of every residual branch, of attention outputs and of
            the output layer; 0 (score_sde's default) makes them exactly zero, so the network starts at
            s ≡ 0 and every block at the identity.
    """

    in_channels: int = 3
    image_size: int = 32
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resblock: Literal["biggan", "ddpm"] = "biggan"
    resample_with_conv: bool = True
    skip_rescale: bool = True
    progressive: Literal["none", "output_skip"] = "none"
    progressive_input: Literal["none", "input_skip", "residual"] = "none"
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    embedding: Literal["fourier", "sinusoidal"] = "sinusoidal"
    embedding_input: Literal["t", "log_sigma"] = "t"
    fourier_scale: float = 16.0
    time_scale: float = 999.0
    sinusoidal_spacing: Literal["half", "ddpm"] = "half"
    time_conditional: bool = True
    scale_by_sigma: bool = False
    input_centered: bool = True
    activation: str = "silu"
    num_heads: int = 1
    attention_impl: AttentionImpl = "math"
    mid_attention: bool = True
    init_scale: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        object.__setattr__(self, "fir_kernel", tuple(self.fir_kernel))
        if not self.fir_kernel or any(float(k) < 0 for k in self.fir_kernel) or sum(self.fir_kernel) <= 0:
            raise ConfigError(f"UNetConfig.fir_kernel must be non-negative taps with a positive sum, got "
                              f"{self.fir_kernel!r}")
        for name, valid in _CHOICES.items():
            value = getattr(self, name)
            if value not in valid:
                raise ConfigError(f"UNetConfig.{name}={value!r} is not valid; valid: {', '.join(valid)}")
        for name in ("in_channels", "image_size", "nf", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_res_blocks < 1:
            raise ConfigError(f"UNetConfig.num_res_blocks must be >= 1, got {self.num_res_blocks!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(f"UNetConfig.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self._check_levels()

    def _check_levels(self) -> None:
        """ConfigError unless the image size, attention resolutions and head count fit the levels."""
        factor = self.downsampling_factor
        if self.image_size % factor:
            raise ConfigError(
                f"UNetConfig.image_size={self.image_size} is not divisible by 2**(len(ch_mult)-1)={factor}"
            )
        valid_res = self.resolutions
        bad = [r for r in self.attn_resolutions if r not in valid_res]
        if bad:
            raise ConfigError(
                f"UNetConfig.attn_resolutions {bad} are not level resolutions at image_size={self.image_size}; "
                f"valid: {', '.join(map(str, valid_res))}"
            )
        for level, mult in enumerate(self.ch_mult):
            if (self.nf * mult) % self.num_heads:
                raise ConfigError(
                    f"UNetConfig: level {level} has {self.nf * mult} channels, not divisible by "
                    f"num_heads={self.num_heads}"
                )

    @property
    def downsampling_factor(self) -> int:
        """Total downsampling: H and W must be multiples of this."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Resolution of each level at ``image_size``."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    @property
    def needs_sigma(self) -> bool:
        """Whether ``forward`` needs ``sigma`` (scale_by_sigma, or a log σ embedding)."""
        return self.scale_by_sigma or (self.time_conditional and self.embedding_input == "log_sigma")

    @property
    def resample_kernel(self) -> tuple[int, ...] | None:
        """The FIR kernel when ``fir``, else None (average pooling / nearest neighbour)."""
        return self.fir_kernel if self.fir else None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _per_sample(value: Tensor | float, batch: int, name: str, like: Tensor) -> Tensor:
    """A (B,) float tensor from a scalar, a 0-d tensor or a (B,) tensor."""
    v = torch.as_tensor(value, device=like.device)
    if not v.is_floating_point():
        v = v.to(torch.float32)
    if v.ndim == 0:
        return v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(v.shape)}")
    return v


# builders of the blocks, handed by UNet.__init__ to the encoder and decoder construction
_MakeRes = Callable[..., ResBlock]
_MakeAttn = Callable[[int], SelfAttention2d]


class UNet(nn.Module):
    """NCSN++ / DDPM++ score network ``s_θ(x, t)``; see the module docstring for the call contract."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ConfigError(f"UNet expects a UNetConfig, got {type(config).__name__}")
        self.config = cfg = config
        channels, act = cfg.in_channels, cfg.activation
        temb_dim = self._build_time_embedding()

        def res(c_in: int, c_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                c_in,
                c_out,
                temb_dim=temb_dim,
                act=act,
                dropout=cfg.dropout,
                skip_rescale=cfg.skip_rescale,
                init_scale=cfg.init_scale,
                fir_kernel=cfg.resample_kernel,
                **kw,
            )

        def attn(c: int) -> SelfAttention2d:
            return SelfAttention2d(
                c,
                num_heads=cfg.num_heads,
                skip_rescale=cfg.skip_rescale,
                init_scale=cfg.init_scale,
                impl=cfg.attention_impl,
            )

        self.conv_in = conv3x3(channels, cfg.nf)
        c, skip_channels = self._build_encoder(res, attn)
        self.mid = nn.ModuleList([res(c, c), attn(c) if cfg.mid_attention else nn.Identity(), res(c, c)])
        c = self._build_decoder(c, skip_channels, res, attn)
        assert not skip_channels
        self.head = (
            OutputHead(c, channels, act=act, init_scale=cfg.init_scale) if cfg.progressive != "output_skip" else None
        )
        self.act = activation(act)

    def _build_time_embedding(self) -> int | None:
        """time embedding: features -> Linear(4nf) -> act -> Linear(4nf); returns its width (None without one)."""
        cfg = self.config
        nf = cfg.nf
        temb_dim: int | None = None
        self.fourier: GaussianFourierEmbedding | None = None
        if cfg.time_conditional:
            if cfg.embedding == "fourier":
                self.fourier = GaussianFourierEmbedding(2 * nf, scale=cfg.fourier_scale)
            temb_dim = 4 * nf
            self.temb_mlp = nn.Sequential(
                linear(2 * nf if cfg.embedding == "fourier" else nf, temb_dim),
                activation(cfg.activation),
                linear(temb_dim, temb_dim),
            )
        return temb_dim

    def _build_encoder(self, res: _MakeRes, attn: _MakeAttn) -> tuple[int, list[int]]:
        """encoder: per level num_res_blocks blocks (+attention), then a downsampling step; returns the channels
        at its output and those of every skip connection, in order."""
        cfg = self.config
        nf, channels = cfg.nf, cfg.in_channels
        n_levels = len(cfg.ch_mult)
        attn_levels = {cfg.resolutions.index(r) for r in cfg.attn_resolutions}
        self.down_blocks, self.down_attn = nn.ModuleList(), nn.ModuleList()
        self.downsamplers, self.input_pyramid = nn.ModuleList(), nn.ModuleList()
        skip_channels = [nf]
        c = nf
        pyramid_c = channels
        for level in range(n_levels):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                c_out = nf * cfg.ch_mult[level]
                blocks.append(res(c, c_out))
                c = c_out
                attns.append(attn(c) if level in attn_levels else nn.Identity())
                skip_channels.append(c)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if level == n_levels - 1:
                continue
            if cfg.resblock == "biggan":
                self.downsamplers.append(res(c, c, down=True))
            else:
                self.downsamplers.append(Resample(c, c, up=False, with_conv=cfg.resample_with_conv,
                                                  fir_kernel=cfg.resample_kernel))
            if cfg.progressive_input == "input_skip":
                self.input_pyramid.append(conv1x1(channels, c))  # score_sde's Combine(method="sum")
            elif cfg.progressive_input == "residual":
                self.input_pyramid.append(Resample(pyramid_c, c, up=False, with_conv=True,
                                                   fir_kernel=cfg.resample_kernel))
                pyramid_c = c
            skip_channels.append(c)
        return c, skip_channels

    def _build_decoder(self, c: int, skip_channels: list[int], res: _MakeRes, attn: _MakeAttn) -> int:
        """decoder: per level num_res_blocks + 1 blocks on [h, skip], attention once, then upsampling; pops
        ``skip_channels`` from its end and returns the channels at its output."""
        cfg = self.config
        attn_levels = {cfg.resolutions.index(r) for r in cfg.attn_resolutions}
        self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList()
        self.upsamplers, self.output_pyramid = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                c_out = cfg.nf * cfg.ch_mult[level]
                blocks.append(res(c + skip_channels.pop(), c_out))
                c = c_out
            self.up_blocks.append(blocks)
            self.up_attn.append(attn(c) if level in attn_levels else nn.Identity())
            if cfg.progressive == "output_skip":
                self.output_pyramid.append(
                    OutputHead(c, cfg.in_channels, act=cfg.activation, init_scale=cfg.init_scale)
                )
            if level != 0:
                if cfg.resblock == "biggan":
                    self.upsamplers.append(res(c, c, up=True))
                else:
                    self.upsamplers.append(Resample(c, c, up=True, with_conv=cfg.resample_with_conv,
                                                    fir_kernel=cfg.resample_kernel))
        return c

    @property
    def needs_sigma(self) -> bool:
        """Whether ``forward`` requires ``sigma`` (see :attr:`UNetConfig.needs_sigma`)."""
        return self.config.needs_sigma

    def _embed(self, t: Tensor | float | None, sigma: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        cfg = self.config
        if not cfg.time_conditional:
            return None
        if cfg.embedding_input == "log_sigma":
            assert sigma is not None  # needs_sigma: _check_input made it a (B,) tensor
            cond = torch.log(sigma)
        else:
            if t is None:
                raise ValueError("UNet is time-conditional: pass t of shape (B,)")
            cond = _per_sample(t, batch, "t", like)
        dtype = cast(nn.Linear, self.temb_mlp[0]).weight.dtype  # features in the model's dtype (float64 stays float64)
        if self.fourier is not None:
            feats = self.fourier(cond.to(self.fourier.W.dtype))
        else:
            feats = sinusoidal_embedding(cond.to(dtype) * cfg.time_scale, cfg.nf, spacing=cfg.sinusoidal_spacing)
        return self.temb_mlp(feats.to(dtype))

    def forward(self, x: Tensor, t: Tensor | float | None = None, sigma: Tensor | float | None = None) -> Tensor:
        """Score at x. x (B, C, H, W); t (B,) in [0, 1] (or a scalar); sigma (B,) marginal std σ(t).

        Returns a tensor shaped like x. Raises ValueError for a wrong shape or a missing sigma.
        """
        cfg = self.config
        sigma = self._check_input(x, sigma)
        temb = self._embed(t, sigma, x.shape[0], x)
        if not cfg.input_centered:
            x = 2.0 * x - 1.0
        h, hs = self._down(x, temb)
        h = self.mid[0](h, temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)
        h, out_pyramid = self._up(h, hs, temb)
        if self.head is not None:
            out: Tensor = self.head(h)
        else:
            assert out_pyramid is not None  # progressive="output_skip": the output pyramid is the output
            out = out_pyramid
        if cfg.scale_by_sigma:
            assert sigma is not None  # needs_sigma: _check_input made it a (B,) tensor
            out = out / sigma.to(out.dtype).view(-1, 1, 1, 1)
        return out

    def _check_input(self, x: Tensor, sigma: Tensor | float | None) -> Tensor | None:
        """ValueError for an input this network cannot take; sigma as a (B,) tensor where the network needs it
        (None where it does not use sigma)."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        f = cfg.downsampling_factor
        if height % f or width % f:
            raise ValueError(
                f"UNet with {len(cfg.ch_mult)} levels needs H and W divisible by {f}, got {height}x{width}"
            )
        if not cfg.needs_sigma:
            return None
        if sigma is None:
            why = "scale_by_sigma=True" if cfg.scale_by_sigma else "embedding_input='log_sigma'"
            raise ValueError(
                f"this UNet has {why}: pass sigma, the (B,) marginal std of x at time t, "
                "e.g. model(x, t, sigma=sde.marginal_coefficients(t)[1])"
            )
        return _per_sample(sigma, batch, "sigma", x)

    def _down(self, x: Tensor, temb: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """The downsampling path: the features at its bottom and the skip connections, in order."""
        cfg = self.config
        pyramid = x
        h = self.conv_in(x)
        hs = [h]
        n_levels = len(cfg.ch_mult)
        for level in range(n_levels):
            blocks = cast(nn.ModuleList, self.down_blocks[level])
            for block, attn in zip(blocks, cast(nn.ModuleList, self.down_attn[level])):
                h = attn(block(h, temb))
                hs.append(h)
            if level == n_levels - 1:
                continue
            down = self.downsamplers[level]
            h = down(h, temb) if isinstance(down, ResBlock) else down(h)
            if cfg.progressive_input == "input_skip":
                pyramid = downsample2x(pyramid, cfg.resample_kernel)
                h = h + self.input_pyramid[level](pyramid)
            elif cfg.progressive_input == "residual":
                pyramid = self.input_pyramid[level](pyramid) + h
                if cfg.skip_rescale:
                    pyramid = pyramid / math.sqrt(2.0)
                h = pyramid
            hs.append(h)
        return h, hs

    def _up(self, h: Tensor, hs: list[Tensor], temb: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The upsampling path over the skip connections ``hs`` (consumed): its features and the output pyramid."""
        cfg = self.config
        out_pyramid: Tensor | None = None
        for i, blocks in enumerate(self.up_blocks):
            for block in cast(nn.ModuleList, blocks):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            h = self.up_attn[i](h)
            if cfg.progressive == "output_skip":
                level_out = self.output_pyramid[i](h)
                if out_pyramid is not None:
                    level_out = upsample2x(out_pyramid, cfg.resample_kernel) + level_out
                out_pyramid = level_out
            if i < len(cfg.ch_mult) - 1:
                up = self.upsamplers[i]
                h = up(h, temb) if isinstance(up, ResBlock) else up(h)
        return h, out_pyramid
