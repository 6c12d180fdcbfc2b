"""Building blocks shared by the image score networks (:mod:`lcssm.models.unet`, :mod:`lcssm.models.ncsnv2`).

Everything here is twice differentiable on CPU and CUDA (sliced and exact score matching differentiate the
score with respect to x and then the parameters) and runs under bf16 autocast: nothing is cast to a fixed
dtype except InstanceNorm++'s statistics (to at least float32, returned in the input's dtype).

Time / noise-level embeddings live in :mod:`lcssm.models.embeddings` and are reused here.
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
    "AttentionImpl",
    "InstanceNormPlus2d",
    "SelfAttention2d",
    "activation",
    "conv1x1",
    "conv3x3",
    "group_norm",
    "linear",
    "num_groups",
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
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(c_in: int, c_out: int, *, bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution (score_sde's NIN) with variance-scaling weights and zero bias."""
    conv = nn.Conv2d(c_in, c_out, 1, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
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
