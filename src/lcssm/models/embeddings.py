"""Time / noise-level embeddings shared by the score networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer/DDPM sinusoidal embedding of a (B,) tensor -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2πWt), cos(2πWt)]`` with fixed W ~ N(0, scale²) (NCSN++, Tancik et al.)."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        proj = 2 * math.pi * t.float()[:, None] * self.W[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)


class SinusoidalEmbedding(nn.Module):
    """Module wrapper of :func:`sinusoidal_embedding`, with t scaled by ``scale`` first (t ∈ [0, 1] -> [0, 1000])."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t * self.scale, self.dim)


def time_embedding(kind: str, dim: int) -> nn.Module:
    """``fourier`` or ``sinusoidal`` embedding module."""
    if kind == "fourier":
        return GaussianFourierEmbedding(dim)
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    from lcssm.errors import ConfigError

    raise ConfigError(f"unknown time embedding {kind!r}; valid: fourier, sinusoidal")
