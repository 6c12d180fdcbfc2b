"""A folder of image files (any sizes, nested folders) decoded once into a uint8 tensor, in memory or in an
on-disk cache that is memory-mapped (:mod:`lcssm.data.array_cache`)."""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lcssm.data.array_cache import load_or_build
from lcssm.data.cifar10 import TEST_FILES, TRAIN_FILES, find_batch_dir, load_cifar10
from lcssm.data.digits import Scale
from lcssm.data.transforms import (
    check_channels,
    check_resolution,
    check_scale,
    pil_to_uint8,
    random_flip,
    to_float,
)
from lcssm.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

#: decoded sizes above this get a warning suggesting a cache directory when none is given
LARGE_DECODE_BYTES = 8 << 30

# What a broken or hostile file makes PIL raise (UnidentifiedImageError and truncation are OSErrors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def scan_images(root: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under ``root`` whose suffix (case-insensitive) is in ``extensions``, sorted by path.

    Hidden files and folders (a leading ``.``: ``.ipynb_checkpoints``, macOS ``._*`` resource forks)
    are left out. Raises DataError when ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {str(root)!r} {what}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in exts]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_holdout(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/held-out split of ``range(n)``: a seeded permutation, sorted index arrays.

    The held-out set has ``round(fraction * n)`` items (at least one when ``fraction > 0``); both sets
    are non-empty unless ``fraction == 0``, which holds nothing out.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"held-out fraction must be in [0, 1), got {fraction!r}")
    n_test = 0 if fraction == 0 else max(1, round(fraction * n))
    if n_test >= n and fraction > 0:
        raise DataError(f"cannot hold out a fraction {fraction} of {n} items and keep any for training")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n - n_test]), np.sort(perm[n - n_test :])


class ImageFolder:
    """Every image under ``root``, centre-cropped to a square and resized to ``resolution``.

    Files are found recursively and kept in sorted path order, so indices are stable across runs and
    machines. Decoding happens once, on the first :meth:`load_all`, and the uint8 result is kept: in memory,
    or with ``cache_dir`` in a file there that this and later processes memory-map (one decode for all
    data-parallel ranks and runs; a changed folder gets a new file). A file PIL cannot decode is skipped with
    a warning naming it (or, with ``strict=True``, raises DataError naming it); the same files are skipped,
    and named, on every run, also when they come from the cache.

    ``scale`` and ``random_flip`` configure :meth:`batch`, which turns indices into a float batch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        resolution: int,
        channels: int = 3,
        scale: Scale = "minus_one_one",
        random_flip: bool = True,
        strict: bool = False,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        cache_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.resolution = check_resolution(resolution)
        self.channels = check_channels(channels)
        self.scale = check_scale(scale)
        self.random_flip = bool(random_flip)
        self.strict = bool(strict)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.progress = progress
        extensions = tuple(extensions)
        self.candidates = scan_images(self.root, extensions)
        if not self.candidates:
            raise DataError(f"no image files ({', '.join(sorted(set(extensions)))}) found under {str(self.root)!r}")
        self.paths: list[Path] | None = None  # the decodable files, known after load_all()
        self._images: torch.Tensor | None = None

    def _skip(self, path: Path, reason: str) -> None:
        if self.strict:
            raise DataError(f"cannot read image {str(path)!r}: {reason}")
        warnings.warn(f"skipping unreadable image {str(path)!r}: {reason}", stacklevel=3)

    def _decode_into(self, out: np.ndarray) -> dict:
        """Decode every candidate into the leading rows of ``out``; ``{"rows", "paths", "skipped"}`` (relative
        paths; ``skipped`` pairs each unreadable file with PIL's reason). With ``strict`` the first unreadable
        file raises at once; otherwise :meth:`load_all` names the skipped ones."""
        from tqdm.auto import tqdm

        r, c = self.resolution, self.channels
        kept: list[str] = []
        skipped: list[tuple[str, str]] = []
        show = len(self.candidates) >= 1000 if self.progress is None else self.progress
        for path in tqdm(self.candidates, desc=f"decoding {self.root.name}", unit="img", disable=not show,
                         leave=False):
            rel = path.relative_to(self.root).as_posix()
            try:
                with Image.open(path) as image:
                    image.load()
                    out[len(kept)] = pil_to_uint8(image, r, c)
            except _DECODE_ERRORS as e:
                if self.strict:
                    self._skip(path, str(e))  # raises
                skipped.append((rel, str(e)))
                continue
            kept.append(rel)
        if not kept:  # load_all will not get to name them
            for rel, reason in skipped:
                self._skip(self.root / rel, reason)
            raise DataError(f"none of the {len(self.candidates)} image files under {str(self.root)!r} could be read")
        return {"rows": len(kept), "paths": kept, "skipped": skipped}

    def _cache_key(self) -> dict:
        """What the decoded array depends on: the folder, size, channels and every file's name, size, mtime."""
        files = []
        for path in self.candidates:
            st = path.stat()
            files.append([path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns])
        return {"root": str(self.root.resolve()), "resolution": self.resolution, "channels": self.channels,
                "files": files}

    def load_all(self) -> torch.Tensor:
        """All decodable images as a uint8 tensor ``(N, C, R, R)`` (decoded on the first call)."""
        if self._images is None:
            r, c = self.resolution, self.channels
            shape = (len(self.candidates), c, r, r)
            if self.cache_dir is None:
                if np.prod(shape) > LARGE_DECODE_BYTES:
                    warnings.warn(
                        f"decoding {shape[0]:,} images of {str(self.root)!r} into {np.prod(shape) / 2**30:.1f} GiB "
                        "of memory (per process); pass a cache directory (--cache-dir) to decode them once into "
                        "a file that every process maps", stacklevel=2)
                images = np.empty(shape, dtype=np.uint8)
                meta = self._decode_into(images)
            else:
                images, meta = load_or_build(self.cache_dir, f"{self.root.name}-{c}x{r}x{r}", self._cache_key(),
                                             shape, self._decode_into)
            for rel, reason in meta["skipped"]:  # named once per load, whether decoded now or read from the cache
                self._skip(self.root / rel, reason)
            self.paths = [self.root / rel for rel in meta["paths"]]
            self._images = torch.from_numpy(images[: meta["rows"]])
        return self._images

    def __len__(self) -> int:
        return self.load_all().shape[0]

    def batch(self, indices: torch.Tensor | np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float32 images at ``indices`` in the configured scale, randomly flipped if so configured.

        ``generator`` drives the flips and is required when ``random_flip`` is on.
        """
        x = self.load_all()[torch.as_tensor(indices, dtype=torch.long)]
        if self.random_flip:
            if generator is None:
                raise DataError("ImageFolder.batch needs a torch.Generator when random_flip=True")
            x = random_flip(x, generator)
        return to_float(x, self.scale)


def conform(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """Resize/convert uint8 ``(N, C, H, W)`` images to ``(N, channels, resolution, resolution)``."""
    n, c, h, w = images.shape
    if (c, h, w) == (channels, resolution, resolution):
        return images
    out = np.empty((n, channels, resolution, resolution), dtype=np.uint8)
    for i, a in enumerate(images.numpy()):
        a = a[0] if c == 1 else a.transpose(1, 2, 0)
        out[i] = pil_to_uint8(Image.fromarray(np.ascontiguousarray(a)), resolution, channels)
    return torch.from_numpy(out)


def load_image_dataset(
    path: str | os.PathLike,
    *,
    resolution: int,
    channels: int = 3,
    scale: Scale = "minus_one_one",
    strict: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Images at ``path`` as uint8 ``(N, channels, resolution, resolution)``, whatever the source.

    ``path`` is either a CIFAR-10 batch folder (``cifar-10-batches-py`` or its parent; the 50000
    training images are used) or a folder of image files (see :class:`ImageFolder`). Anything else
    raises DataError. ``strict`` and ``cache_dir`` are :class:`ImageFolder`'s. Pixels stay uint8 to keep the
    cache four times smaller; batches are converted with ``to_float(batch, scale)`` -- ``scale`` is checked here
    so a typo fails before minutes of decoding.
    """
    check_scale(scale)
    check_resolution(resolution)
    check_channels(channels)
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist")
    if not path.is_dir():
        hint = " (extract the archive first)" if path.name.endswith((".tar.gz", ".tgz", ".zip")) else ""
        raise DataError(f"dataset path {str(path)!r} is a file; expected a folder{hint}")
    if find_batch_dir(path) is not None:
        images, _ = load_cifar10(path, "train")
        return conform(images, resolution, channels)
    if not scan_images(path):
        raise DataError(
            f"{str(path)!r} is neither a CIFAR-10 batch folder ({', '.join(TRAIN_FILES + TEST_FILES)}) "
            f"nor a folder of images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    folder = ImageFolder(path, resolution=resolution, channels=channels, scale=scale, strict=strict,
                         cache_dir=cache_dir)
    return folder.load_all()


__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "load_image_dataset",
    "random_flip",
    "scan_images",
    "split_holdout",
    "to_float",
]
