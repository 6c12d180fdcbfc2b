"""Building blocks shared by the image score networks (:mod:`lcssm.models.unet`, :mod:`lcssm.models.ncsnv2`).

Everything here is twice differentiable on CPU and CUDA (sliced and exact score matching differentiate the
score with respect to x and then the parameters) and runs under bf16 autocast: nothing is cast to a fixed
dtype except InstanceNorm++'s statistics (to at least float32, returned in the input's dtype).

Time / noise-level embeddings live in :mod:`lcssm.models.embeddings` and are reused here.

FIR resampling (:func:`upfirdn2d`, :func:`fir_upsample`, :func:`fir_downsample`, :class:`FIRConv2d`) follows the
semantics of StyleGAN2's ``upfirdn2d`` (Karras et al. 2020) as score_sde uses it for NCSN++ (Song et al., ICLR
2021, App. H): zero-insertion upsampling, padding, a normalised separable FIR filter, then decimation; written as
a depthwise convolution (twice differentiable, any device and dtype).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcssm.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "FIRConv2d",
    "OutputHead",
    "ResBlock",
    "Resample",
    "AttentionImpl",
    "InstanceNormPlus2d",
    "SelfAttention2d",
    "activation",
    "conv1x1",
    "conv3x3",
    "fir_downsample",
    "fir_filter",
    "fir_upsample",
    "group_norm",
    "linear",
    "num_groups",
    "upfirdn2d",
    "variance_scaling_",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}
AttentionImpl = Literal["math", "sdpa"]
ATTENTION_IMPLS = ("math", "sdpa")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (a key of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


# --- initialisation ---------------------------------------------------------------------------------------


@torch.no_grad()
def variance_scaling_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM/score_sde initialisation: uniform with variance ``scale / fan_avg`` (in place).

    ``fan_avg = (fan_in + fan_out) / 2`` including the receptive field, i.e. Glorot-uniform with
    gain √scale. ``scale = 0`` gives exact zeros (score_sde uses 1e-10 for the same purpose: residual
    branches and output layers that start as the identity / zero map).
    """
    if scale == 0:
        return nn.init.zeros_(weight)
    return nn.init.xavier_uniform_(weight, gain=math.sqrt(scale))


def conv3x3(
    c_in: int,
    c_out: int,
    *,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    bias: bool = True,
    init_scale: float = 1.0,
) -> nn.Conv2d:
    """3x3 convolution with variance-scaling weights and zero bias (DDPM init)."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if conv.bias is not None:  # bias=True
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(c_in: int, c_out: int, *, bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution (score_sde's NIN) with variance-scaling weights and zero bias."""
    conv = nn.Conv2d(c_in, c_out, 1, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if conv.bias is not None:  # bias=True
        nn.init.zeros_(conv.bias)
    return conv


def linear(d_in: int, d_out: int, *, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with variance-scaling weights and zero bias."""
    lin = nn.Linear(d_in, d_out)
    variance_scaling_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


# --- normalisation ----------------------------------------------------------------------------------------


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """score_sde's ``min(channels // 4, 32)`` groups, lowered to the nearest divisor of ``channels``."""
    g = max(1, min(channels // min_group_size, max_groups))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with :func:`num_groups` groups (eps 1e-6 as in NCSN++/DDPM++)."""
    return nn.GroupNorm(num_groups(channels), channels, eps=eps)


class InstanceNormPlus2d(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019, NCSN; unconditional form used by NCSNv2).

    Instance normalisation discards each channel's spatial mean μ_c; InstanceNorm++ adds it back in
    normalised form: ``γ_c · ((x − μ_c)/s_c + α_c · (μ_c − m)/v) + β_c`` where m and v² are the mean and
    (unbiased) variance of the μ_c over channels. Statistics are computed in at least float32 and the result
    is returned in the input's dtype, so the layer stays accurate under bf16 autocast.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.alpha = nn.Parameter(torch.empty(channels))
        self.gamma = nn.Parameter(torch.empty(channels))
        self.beta = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.alpha.normal_(1.0, 0.02)
        self.gamma.normal_(1.0, 0.02)
        self.beta.zero_()

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half precision -> float32; float64 stays
        mu = xf.mean(dim=(2, 3), keepdim=True)
        var = xf.var(dim=(2, 3), keepdim=True, unbiased=False)
        h = (xf - mu) * torch.rsqrt(var + self.eps)
        mu_c = mu.flatten(1)
        mu_plus = (mu_c - mu_c.mean(dim=1, keepdim=True)) * torch.rsqrt(mu_c.var(dim=1, keepdim=True) + self.eps)
        h = h + mu_plus[:, :, None, None] * self.alpha[:, None, None]
        out = self.gamma[:, None, None] * h + self.beta[:, None, None]
        return out.to(x.dtype)


# --- attention --------------------------------------------------------------------------------------------


class SelfAttention2d(nn.Module):
    """Spatial self-attention over the H·W positions (DDPM / NCSN++ ``AttnBlockpp``).

    ``out = x + proj(softmax(q kᵀ/√d) v)``, divided by √2 when ``skip_rescale``; q, k, v are 1x1
    convolutions of GroupNorm(x). ``impl``:

    - ``"math"`` (default): explicit matmul + softmax. Twice differentiable everywhere (needed by exact SM,
      SSM and SSM-VR), memory O((HW)²) per head.
    - ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`. Faster on GPU, but its fused
      kernels have no double backward (on CPU it fails even for the default kernel): use it
      only with first-order objectives (dsm, lcss, fdssm), or wrap the call in
      ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        impl: AttentionImpl = "math",
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ConfigError(f"attention: {channels} channels are not divisible by num_heads={num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"unknown attention impl {impl!r}; valid: {', '.join(ATTENTION_IMPLS)}")
        self.num_heads, self.skip_rescale, self.impl = num_heads, skip_rescale, impl
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        with torch.no_grad():  # q, k, v initialised like three separate score_sde NINs (scale 0.1)
            for w in self.qkv.weight.chunk(3, dim=0):
                variance_scaling_(w, 0.1)
            assert self.qkv.bias is not None  # nn.Conv2d's default bias=True
            self.qkv.bias.zero_()
        self.proj = conv1x1(channels, channels, init_scale=init_scale)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, heads, c // heads, h * w).unbind(1)
        q, k, v = (z.transpose(-1, -2) for z in (q, k, v))  # (B, heads, HW, d)
        if self.impl == "math":
            attn = torch.softmax((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5, dim=-1)
            out = attn.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        out = x + out
        return out / math.sqrt(2.0) if self.skip_rescale else out


# --- FIR resampling ---------------------------------------------------------------------------------------


def fir_filter(kernel: tuple[int, ...] | list[float], *, like: Tensor, gain: float = 1.0) -> Tensor:
    """The 2-D FIR filter ``gain · k kᵀ / (Σk)²`` of a 1-D kernel (StyleGAN2 / score_sde ``_setup_kernel``), in
    ``like``'s dtype and device. Its entries sum to ``gain``: a constant image keeps its value times ``gain``."""
    k = torch.as_tensor(kernel, dtype=like.dtype, device=like.device)
    if k.ndim != 1 or k.numel() < 1:
        raise ConfigError(f"fir_kernel must be a non-empty 1-D sequence, got {kernel!r}")
    k2 = torch.outer(k, k)
    return k2 * (gain / k2.sum())


def upfirdn2d(x: Tensor, kernel: Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion (factor ``up``), pad (``pad[0]`` before, ``pad[1]`` after, in H and W; negative
    crops), correlate every channel with the flipped 2-D ``kernel`` (i.e. convolve with it), keep every
    ``down``-th pixel. Output size per axis: ``(n·up + pad[0] + pad[1] − len(kernel)) // down + 1``.

    One depthwise ``conv2d`` (stride ``down``); twice differentiable.
    """
    b, c, h, w = x.shape
    if up > 1:  # x[i] lands at i*up, zeros between (and up-1 zeros after the last sample)
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """×2 upsampling with the FIR filter (score_sde ``upsample_2d``: gain 4 on the zero-inserted image, so a
    constant image stays constant); (B, C, H, W) -> (B, C, 2H, 2W)."""
    k = fir_filter(kernel, like=x, gain=4.0)
    p = k.shape[0] - 2
    return upfirdn2d(x, k, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_downsample(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """÷2 downsampling with the FIR filter (score_sde ``downsample_2d``); (B, C, H, W) -> (B, C, H/2, W/2)."""
    k = fir_filter(kernel, like=x)
    p = k.shape[0] - 2
    return upfirdn2d(x, k, down=2, pad=((p + 1) // 2, p // 2))


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR ×2 up- or down-sampling (StyleGAN2's ``upsample_conv_2d`` /
    ``conv_downsample_2d``, score_sde ``up_or_down_sampling.Conv2d``): padding is applied once.

    down: FIR-filter with padding ``(len(k) − 2 + 2)`` split evenly, then a stride-2 3x3 conv. up: a stride-2
    transposed 3x3 conv, then the FIR filter with gain 4. ``weight`` (out, in, 3, 3) and ``bias`` have the
    shapes of a plain 3x3 conv (same parameter count, DDPM initialisation). The up path follows StyleGAN2's
    definition (zero insertion, full 3x3 correlation, FIR); score_sde's PyTorch port of it slices with a negative
    step, which PyTorch rejects, so no score_sde configuration uses it (only DDPM-style blocks with FIR would).
    """

    def __init__(self, c_in: int, c_out: int, *, up: bool, kernel: tuple[int, ...], init_scale: float = 1.0) -> None:
        super().__init__()
        self.up, self.kernel = up, tuple(kernel)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(c_out))
        variance_scaling_(self.weight, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.kernel)
        if self.up:
            h = F.conv_transpose2d(x, torch.flip(self.weight, (2, 3)).transpose(0, 1), stride=2)
            p = n - 2 - 2  # (taps − factor) − (conv size − 1)
            h = upfirdn2d(h, fir_filter(self.kernel, like=h, gain=4.0), pad=((p + 1) // 2 + 1, p // 2 + 1))
        else:
            p = n - 2 + 2
            h = upfirdn2d(x, fir_filter(self.kernel, like=x), pad=((p + 1) // 2, p // 2))
            h = F.conv2d(h, self.weight, stride=2)
        return h + self.bias[:, None, None]


def upsample2x(x: Tensor, fir_kernel: tuple[int, ...] | None = None) -> Tensor:
    """×2 upsampling: nearest neighbour, or the FIR filter ``fir_kernel``."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest") if fir_kernel is None else fir_upsample(x, fir_kernel)


def downsample2x(x: Tensor, fir_kernel: tuple[int, ...] | None = None) -> Tensor:
    """÷2 downsampling: 2x2 average pooling, or the FIR filter ``fir_kernel``."""
    return F.avg_pool2d(x, 2) if fir_kernel is None else fir_downsample(x, fir_kernel)


# --- U-Net blocks -----------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Residual block with time-embedding bias (score_sde ``ResnetBlockDDPMpp`` / ``ResnetBlockBigGANpp``).

    ``h = Conv(act(GN(x))) + Dense(act(temb)); h = Conv(Dropout(act(GN(h))))``, output
    ``(shortcut(x) + h) / √2`` with skip rescaling. ``up``/``down`` (BigGAN style) resample both paths after
    the first activation (nearest / average pooling, or FIR with ``fir_kernel``); the shortcut is a 1x1 conv
    whenever shapes change.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        temb_dim: int | None,
        act: str,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        up: bool = False,
        down: bool = False,
        fir_kernel: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.up, self.down, self.skip_rescale, self.fir_kernel = up, down, skip_rescale, fir_kernel
        self.act = activation(act)
        self.norm0 = group_norm(c_in)
        self.conv0 = conv3x3(c_in, c_out)
        self.temb_proj = linear(temb_dim, c_out) if temb_dim is not None else None
        self.norm1 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(c_out, c_out, init_scale=init_scale)
        self.shortcut = conv1x1(c_in, c_out) if (c_in != c_out or up or down) else None

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self.act(self.norm0(x))
        if self.up:
            h, x = upsample2x(h, self.fir_kernel), upsample2x(x, self.fir_kernel)
        elif self.down:
            h, x = downsample2x(h, self.fir_kernel), downsample2x(x, self.fir_kernel)
        h = self.conv0(h)
        if self.temb_proj is not None and temb is not None:
            h = h + self.temb_proj(self.act(temb))[:, :, None, None]
        h = self.conv1(self.dropout(self.act(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class Resample(nn.Module):
    """DDPM-style resampling layer (score_sde ``layerspp.Upsample`` / ``Downsample``).

    Without FIR: nearest ×2 (+3x3 conv), or 2x2 average pool / stride-2 3x3 conv padded right/bottom by one
    (TensorFlow's 'SAME', as score_sde). With ``fir_kernel``: FIR resampling, fused with the conv
    (:class:`FIRConv2d`) when ``with_conv``.
    """

    def __init__(self, c_in: int, c_out: int, *, up: bool, with_conv: bool,
                 fir_kernel: tuple[int, ...] | None = None) -> None:  # c_in == c_out without conv
        super().__init__()
        self.up, self.fir_kernel = up, fir_kernel
        self.conv: nn.Module | None = None
        if with_conv and fir_kernel is not None:
            self.conv = FIRConv2d(c_in, c_out, up=up, kernel=fir_kernel)
        elif with_conv:
            self.conv = conv3x3(c_in, c_out) if up else conv3x3(c_in, c_out, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.conv, FIRConv2d):
            return self.conv(x)
        if self.up:
            x = upsample2x(x, self.fir_kernel)
            return self.conv(x) if self.conv is not None else x
        if self.conv is None:
            return downsample2x(x, self.fir_kernel)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class OutputHead(nn.Module):
    """``Conv3x3(act(GroupNorm(h)))`` to image channels."""

    def __init__(self, c_in: int, c_out: int, *, act: str, init_scale: float) -> None:
        super().__init__()
        self.norm = group_norm(c_in)
        self.act = activation(act)
        self.conv = conv3x3(c_in, c_out, init_scale=init_scale)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(self.act(self.norm(h)))
