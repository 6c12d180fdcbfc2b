"""Time / noise-level embeddings shared by the score networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, *, spacing: str = "half") -> Tensor:
    """Transformer/DDPM sinusoidal embedding ``[sin(t·f_k), cos(t·f_k)]`` of a (B,) tensor -> (B, dim), computed in
    t's dtype (float32 for integer t), zero-padded for odd ``dim``.

    ``spacing``: ``"ddpm"``: f_k = exp(−ln(max_period)·k/(half−1)), k = 0 … half−1 (DDPM, Ho et al. 2020, and
    score_sde's ``get_timestep_embedding``: the lowest frequency is exactly 1/max_period); ``"half"``:
    f_k = exp(−ln(max_period)·k/half) (Vaswani et al. 2017's spacing, lcssm's original choice).
    """
    half = dim // 2
    if spacing not in ("half", "ddpm"):
        raise ValueError(f"unknown sinusoidal spacing {spacing!r}; valid: half, ddpm")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    denom = half if spacing == "half" else max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / denom)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2πWt), cos(2πWt)]`` with fixed W ~ N(0, scale²) (NCSN++, Tancik et al.)."""

    W: Tensor  # buffer

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """Features in the dtype of W (the model's: a float64 model is not rounded to float32 on the way)."""
        proj = 2 * math.pi * t.to(self.W.dtype)[:, None] * self.W[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)


class SinusoidalEmbedding(nn.Module):
    """Module wrapper of :func:`sinusoidal_embedding`, with t scaled by ``scale`` first (t ∈ [0, 1] -> [0, 1000])."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding((t * self.scale).float(), self.dim)  # float32, as always for the MLPs


def time_embedding(kind: str, dim: int) -> nn.Module:
    """``fourier`` or ``sinusoidal`` embedding module."""
    if kind == "fourier":
        return GaussianFourierEmbedding(dim)
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    from lcssm.errors import ConfigError

    raise ConfigError(f"unknown time embedding {kind!r}; valid: fourier, sinusoidal")
