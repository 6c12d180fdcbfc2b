"""Argument checks and noise draws shared by the sampling algorithms."""

from __future__ import annotations

import torch
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.sde import SDE


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def norms(v: Tensor) -> Tensor:
    """Per-sample Euclidean norms over all data dims, shape (B,)."""
    return v.flatten(1).norm(dim=1)


def check_t_min(t_min: float, sde: SDE) -> None:
    if not 0 < t_min < sde.T:
        raise ConfigError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")
