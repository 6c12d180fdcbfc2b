"""scikit-learn's handwritten digits (8x8, 17 grey levels 0..16), with lcssm's fixed train/test split."""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
import torch

from lcssm.errors import DataError

N_LEVELS = 17  # pixel values are integers 0..16
N_TEST = 360
SPLIT_SEED = 0

Split = Literal["train", "test", "all"]
Scale = Literal["zero_one", "minus_one_one"]


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError("the digits data ships with scikit-learn: pip install 'lcssm[digits]'") from e
    bunch = sk_load_digits()
    return bunch.images.astype(np.int64), bunch.target.astype(np.int64)


def split_indices(n: int, split: Split) -> np.ndarray:
    """The fixed split: a seed-0 permutation, the last 360 images are the test set."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    if split == "train":
        return np.sort(perm[:-N_TEST])
    if split == "test":
        return np.sort(perm[-N_TEST:])
    if split == "all":
        return np.arange(n)
    raise DataError(f"unknown digits split {split!r}; valid: train, test, all")


def to_unit(levels: torch.Tensor | np.ndarray, scale: Scale) -> torch.Tensor:
    """Grey levels 0..16 -> float32 in [0, 1] (``zero_one``) or [-1, 1] (``minus_one_one``)."""
    x = torch.as_tensor(levels, dtype=torch.float32) / (N_LEVELS - 1)
    if scale == "zero_one":
        return x
    if scale == "minus_one_one":
        return 2.0 * x - 1.0
    raise DataError(f"unknown scale {scale!r}; valid: zero_one, minus_one_one")


@overload
def load_digits(
    split: Split = "train", *, scale: Scale = "minus_one_one", return_labels: Literal[False] = False
) -> torch.Tensor: ...


@overload
def load_digits(
    split: Split = "train", *, scale: Scale = "minus_one_one", return_labels: Literal[True]
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def load_digits(
    split: Split = "train", *, scale: Scale = "minus_one_one", return_labels: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def load_digits(
    split: Split = "train", *, scale: Scale = "minus_one_one", return_labels: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Digits images as a float32 tensor ``(N, 1, 8, 8)`` (1437 train / 360 test / 1797 all).

    With ``return_labels=True`` also returns the int64 class labels ``(N,)``.
    """
    images, labels = _load_raw()
    idx = split_indices(len(images), split)
    x = to_unit(images[idx], scale).unsqueeze(1)
    if return_labels:
        return x, torch.from_numpy(labels[idx])
    return x
