"""Small tensor helpers shared by the objectives, SDEs, samplers and the likelihood."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lcssm.errors import ConfigError

__all__ = ["Probe", "bcast", "probe_noise"]

Probe = Literal["rademacher", "gaussian"]


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample ``(B,)`` tensor as ``(B, 1, ..., 1)``, to broadcast against ``x`` of shape ``(B, *D)``."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def probe_noise(shape: Sequence[int], kind: str, *, generator: torch.Generator | None, device: torch.device,
                dtype: torch.dtype, name: str = "probe") -> Tensor:
    """Random probe vectors with E[vvᵀ] = I: Rademacher (±1) or standard Gaussian entries (Hutchinson's trace
    estimator, sliced score matching). ``name`` is the argument's name in the error for an unknown ``kind``."""
    if kind == "gaussian":
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if kind == "rademacher":
        r = torch.randint(0, 2, tuple(shape), generator=generator, device=device)
        return r.to(dtype).mul_(2).sub_(1)
    raise ConfigError(f"unknown {name} {kind!r}; valid: rademacher, gaussian")
