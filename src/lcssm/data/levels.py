"""Images as integer grey levels: a split of a dataset (:class:`ImageData`) and the maps between levels, the float
scales a network sees and 8-bit pixels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lcssm.errors import DataError

__all__ = ["ImageData", "levels_to_float", "to_uint8"]


@dataclass
class ImageData:
    """One split of a run's data: integer grey levels (uint8), the number of levels and their origin.

    ``levels`` ``(M, C, R, R)`` holds the whole source, possibly memory-mapped, and ``index`` the rows of it in
    this split (None = all), so that a split of a folder too large for memory is never copied as a whole.
    """

    levels: Tensor
    n_bins: int
    source: str
    index: Tensor | None = None

    def __len__(self) -> int:
        return len(self.levels) if self.index is None else len(self.index)

    def take(self, rows: Tensor) -> Tensor:
        """The uint8 levels of rows ``rows`` (positions in this split)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.levels[rows if self.index is None else self.index[rows]]

    def chunks(self, size: int, n: int | None = None) -> Iterator[Tensor]:
        """The levels of the first ``n`` rows (all by default) in chunks of ``size``."""
        stop = len(self) if n is None else min(n, len(self))
        for i in range(0, stop, size):
            yield self.take(torch.arange(i, min(i + size, stop)))

    def uint8(self, levels: Tensor) -> Tensor:
        """Levels of this data as 8-bit pixels, as they would be saved (the levels themselves for 256 levels)."""
        return levels if self.n_bins == 256 else to_uint8(levels_to_float(levels, self.n_bins, "zero_one"),
                                                          "zero_one")

    def as_float(self, scale: str) -> Tensor:
        """The whole split as the network sees it (:func:`levels_to_float`; in memory)."""
        return levels_to_float(self.take(torch.arange(len(self))), self.n_bins, scale)

    def as_uint8(self) -> Tensor:
        """The whole split as 8-bit pixels (in memory: use :meth:`chunks` for large splits)."""
        return self.uint8(self.take(torch.arange(len(self))))


def levels_to_float(levels: Tensor, n_bins: int, scale: str) -> Tensor:
    """Levels ``k ∈ {0, …, n_bins − 1}`` -> float32 ``k/(n_bins − 1)`` (``zero_one``) or ``2k/(n_bins − 1) − 1``
    (``minus_one_one``). For 256 levels this is :func:`lcssm.data.transforms.to_float`."""
    x = levels.float() / (n_bins - 1)
    if scale == "zero_one":
        return x
    if scale == "minus_one_one":
        return 2.0 * x - 1.0
    raise DataError(f"unknown scale {scale!r}; valid: zero_one, minus_one_one")


def to_uint8(samples: Tensor, scale: str) -> Tensor:
    """Samples in the data scale -> 8-bit images (clamped to the data range, rounded to 256 levels)."""
    x = samples.detach().float()
    if scale == "minus_one_one":
        x = (x + 1.0) / 2.0
    elif scale != "zero_one":
        raise DataError(f"unknown scale {scale!r}; valid: zero_one, minus_one_one")
    x = torch.nan_to_num(x, nan=0.0)  # a diverged sample becomes a black image, not an error
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
