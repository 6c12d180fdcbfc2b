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


class _ResidualBlock(nn.Module):
    """``h + W₂·act(W₁·act(LayerNorm(h)) + E·emb)``: the time embedding enters every block; W₂ starts at zero, so
    each block starts as the identity."""

    def __init__(self, width: int, embed_dim: int, activation: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(embed_dim, width)
        self.act = activation_layer(activation)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h))) + self.emb(emb)))


class ResidualScoreMLP(nn.Module):
    """Time-conditional score ``s_θ(x, t)`` for point data: ``n_blocks`` residual blocks of width ``hidden``, each
    fed the time embedding (as DDPM's U-Net feeds it to every block, Ho et al. 2020), between a linear input and
    a linear output layer. Deeper than :class:`ScoreMLP` at the same width and easier to train: 2-D data with thin
    structure (two spirals) need it."""

    def __init__(self, dim: int = 2, hidden: int = 256, n_blocks: int = 4, activation: str = "silu",
                 time_embed: str = "sinusoidal", embed_dim: int = 64) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.embed = time_embedding(time_embed, embed_dim)
        self.temb = nn.Sequential(nn.Linear(embed_dim, embed_dim), activation_layer(activation))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, embed_dim, activation) for _ in range(n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), activation_layer(activation), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor | None = None, sigma: Tensor | None = None) -> Tensor:
        """The score at (x, t); ``sigma`` is unused."""
        if t is None:
            raise ValueError("ResidualScoreMLP is time-conditional: call it as model(x, t)")
        emb = self.temb(self.embed(t).to(x.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
