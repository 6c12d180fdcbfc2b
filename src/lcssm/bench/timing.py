"""Side-by-side timing of several step functions in one process.

Rules (so that ratios are meaningful on a machine that is not quiet): every candidate is warmed up first;
repetitions are interleaved round-robin, in an order reshuffled each round, so a background load hits every
candidate alike; the statistic is the median with its inter-quartile range; CUDA work is synchronised
around each call. A slow candidate can be given fewer repetitions through ``max_seconds``.

Also here: the autograd-graph memory of a step (bytes of tensors saved for backward), a device-independent
proxy for activation memory, and the CUDA peak when running on a GPU.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["TimingStats", "cuda_peak_memory", "graph_memory", "paired_ratio", "time_round_robin"]


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call (or a ratio, see :func:`paired_ratio`): median, quartiles, number of samples, and the
    samples with the round-robin round each was taken in."""

    median: float
    q1: float
    q3: float
    n: int
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)
    rounds: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def ms(self) -> str:
        """``median [q1, q3]`` in milliseconds."""
        return f"{1e3 * self.median:.4g} [{1e3 * self.q1:.4g}, {1e3 * self.q3:.4g}]"

    def fmt(self, scale: float = 1.0) -> str:
        """``median [q1, q3]`` times ``scale``."""
        return f"{scale * self.median:.4g} [{scale * self.q1:.4g}, {scale * self.q3:.4g}]"

    @staticmethod
    def of(samples: list[float], rounds: list[int] | None = None) -> TimingStats:
        if not samples:
            raise ValueError("no timing samples")
        rounds = list(range(len(samples))) if rounds is None else rounds
        s = sorted(samples)
        if len(s) == 1:
            return TimingStats(s[0], s[0], s[0], 1, tuple(samples), tuple(rounds))
        q = statistics.quantiles(s, n=4, method="inclusive")
        return TimingStats(statistics.median(s), q[0], q[2], len(s), tuple(samples), tuple(rounds))


def paired_ratio(num: TimingStats, den: TimingStats) -> TimingStats:
    """Statistics of the per-round ratios num/den over the rounds in which both were timed: a background
    load that slows one round slows both of its terms, so this is tighter than a ratio of medians."""
    by_round = dict(zip(den.rounds, den.samples))
    ratios = [a / by_round[r] for r, a in zip(num.rounds, num.samples) if r in by_round]
    if not ratios:  # no shared rounds: fall back to the ratio of medians
        return TimingStats.of([num.median / den.median])
    return TimingStats.of(ratios)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 2,
    max_seconds: float | None = None,
    min_repeats: int = 3,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, TimingStats]:
    """Time each candidate ``repeats`` times, interleaved; returns per-candidate :class:`TimingStats`.

    ``warmup`` untimed rounds run first. A candidate whose timed calls add up to more than ``max_seconds``
    stops being timed once it has ``min_repeats`` samples (the others go on).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = torch.device(device)
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    _sync(device)
    samples: dict[str, list[float]] = {n: [] for n in names}
    rounds: dict[str, list[int]] = {n: [] for n in names}
    rng = random.Random(seed)
    for r in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            done = samples[name]
            if max_seconds is not None and len(done) >= min_repeats and sum(done) > max_seconds:
                continue
            _sync(device)
            t0 = time.perf_counter()
            candidates[name]()
            _sync(device)
            done.append(time.perf_counter() - t0)
            rounds[name].append(r)
    return {n: TimingStats.of(s, rounds[n]) for n, s in samples.items()}


@contextmanager
def _saved_tensor_bytes(counter: dict[str, int]):
    seen: set[tuple[int, int]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            return t
        if key not in seen and key[0] != 0:
            seen.add(key)
            counter["bytes"] += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def graph_memory(loss_fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves while building ``loss_fn()``'s graph (including the
    ``create_graph`` backward passes of the Jacobian objectives), i.e. the activation memory a backward
    pass through that loss holds. Parameters are counted too when an op saves them."""
    counter = {"bytes": 0}
    with _saved_tensor_bytes(counter):
        loss = loss_fn()
    del loss
    return counter["bytes"]


def cuda_peak_memory(step: Callable[[], object], device: torch.device) -> int | None:
    """Peak CUDA memory allocated during one call of ``step`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
