"""MLPs for low-dimensional data: an energy model (score = ∇ₓf) and a direct, optionally time-conditional,
score model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lcssm.errors import ConfigError
from lcssm.models.embeddings import time_embedding
from lcssm.models.layers import activation as activation_layer


def mlp(d_in: int, d_out: int, hidden: int, n_hidden: int, activation: str) -> nn.Sequential:
    activation_layer(activation)  # validates the name before any layer is built
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), activation_layer(activation)]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class EnergyMLP(nn.Module):
    """Unnormalised log-density ``f_θ(x)`` (paper App. B: 2 hidden layers of 300, smooth activation).

    ``forward`` returns the score ``∇ₓf_θ(x)``; :meth:`log_density` returns f. The score keeps its graph
    (for training through it) only when gradients are enabled, so sampling under ``torch.no_grad()`` does not
    pay for double backward.
    """

    def __init__(self, dim: int = 2, hidden: int = 300, n_hidden: int = 2, activation: str = "silu") -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.net = mlp(dim, 1, hidden, n_hidden, activation)

    def log_density(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def forward(self, x: Tensor, t: Tensor | None = None, sigma: Tensor | None = None) -> Tensor:
        """The score ∇ₓf(x); ``t`` and ``sigma`` are unused (an energy model has one noise scale)."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            f = self.log_density(x)
            (score,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
        return score


class ScoreMLP(nn.Module):
    """Direct score model ``s_θ(x)`` or, with ``time_embed`` set, ``s_θ(x, t)``."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        n_hidden: int = 3,
        activation: str = "silu",
        time_embed: str | None = None,
        embed_dim: int = 64,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.embed = time_embedding(time_embed, embed_dim) if time_embed else None
        self.net = mlp(dim + (embed_dim if time_embed else 0), dim, hidden, n_hidden, activation)

    def forward(self, x: Tensor, t: Tensor | None = None, sigma: Tensor | None = None) -> Tensor:
        """The score at x (and time t when time-conditional); ``sigma`` is unused."""
        if self.embed is None:
            return self.net(x)
        if t is None:
            raise ValueError("this ScoreMLP is time-conditional: call it as model(x, t)")
        return self.net(torch.cat([x, self.embed(t).to(x.dtype)], dim=1))
