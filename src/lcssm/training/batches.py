"""Batches and seeds as pure functions of the training step, for :func:`lcssm.training.loop.train`.

A ``batch_fn(step, rank, world_size)`` returns rank ``rank``'s share of step ``step``'s global batch; the
helpers here (:func:`sampler_batches` for samplers, :class:`tensor_batches` for fixed datasets) make it depend
on nothing else, so a resumed run sees the same data as an uninterrupted one and a step sees the same rows
whatever the number of ranks. :func:`step_seed` derives the seed of every random stream from
``(seed, step, rank, stream)``. :mod:`lcssm.training.loop` re-exports the batch helpers, ``BatchFn`` and
:func:`step_seed`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lcssm.device import make_generator
from lcssm.errors import ConfigError, DataError

__all__ = [
    "STREAM_NOISE",
    "STREAM_PERMUTATION",
    "STREAM_RESEED",
    "STREAM_SAMPLER",
    "BatchFn",
    "per_rank_batch_size",
    "sampler_batches",
    "step_seed",
    "tensor_batches",
]

BatchFn = Callable[[int, int, int], Any]

# independent random streams derived from the run seed (STREAM_RESEED: the global RNGs of a resume that cannot
# restore them)
STREAM_NOISE, STREAM_SAMPLER, STREAM_PERMUTATION, STREAM_RESEED = 0, 1, 2, 3


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that is a pure function of ``(seed, step, rank, stream)``, mixed by NumPy's SeedSequence
    (no Python ``hash``, which is salted per process): neighbouring steps and ranks get unrelated streams."""
    words = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of a global batch; ConfigError unless ``world_size`` divides ``batch_size``."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the world size {world_size}; "
                          f"use a multiple of {world_size}")
    return batch_size // world_size


def sampler_batches(sample: Callable[[int, torch.Generator], Tensor], batch_size: int, seed: int) -> BatchFn:
    """``batch_fn`` drawing fresh points from ``sample(n, generator)`` (e.g. a toy distribution).

    Step k's global batch is ``sample(batch_size, generator seeded from (seed, k))``; rank r of W gets rows
    ``[r·b, (r+1)·b)`` with ``b = batch_size // W``. The data a step sees therefore does not depend on the
    number of ranks (each rank draws the global batch, which is cheap for the samplers this is meant for).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

    def batch_fn(step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        b = per_rank_batch_size(batch_size, world_size)
        x = sample(batch_size, make_generator(step_seed(seed, step, 0, STREAM_SAMPLER)))
        return x[rank * b:(rank + 1) * b]

    return batch_fn


class tensor_batches:  # noqa: N801 - used like a function; a class only to hold its permutation cache
    """``batch_fn`` over a fixed dataset: epochs of random permutations derived from ``(seed, epoch)``.

    The data are read as one endless stream (epoch 0's permutation, then epoch 1's, ...); step k's global
    batch is positions ``[k·B, (k+1)·B)`` of it and rank r of W takes its r-th slice of ``B // W`` rows, so a
    step sees the same rows whatever the number of ranks, every point is seen once per epoch, and a batch
    may straddle two epochs (no point is dropped, and datasets smaller than a batch work).
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int) -> None:
        if not isinstance(data, Tensor) or data.dim() < 1 or len(data) == 0:
            raise DataError(f"tensor_batches needs a non-empty tensor of shape (n, ...), got "
                            f"{getattr(data, 'shape', type(data).__name__)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = make_generator(step_seed(self.seed, epoch, 0, STREAM_PERMUTATION))
            self._perms[epoch] = torch.randperm(len(self.data), generator=g)
        return self._perms[epoch]

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        b = per_rank_batch_size(self.batch_size, world_size)
        n = len(self.data)
        pos = step * self.batch_size + rank * b + torch.arange(b, dtype=torch.int64)
        epoch, offset = pos // n, pos % n
        idx = torch.empty(b, dtype=torch.int64)
        for e in epoch.unique().tolist():
            sel = epoch == e
            idx[sel] = self.permutation(int(e))[offset[sel]]
        return self.data[idx.to(self.data.device)]
