"""Image transforms: decode-time geometry (PIL) and batch-time scaling and flips (torch).

Images are decoded once into a uint8 tensor ``(N, C, R, R)``; the per-batch work is converting to float
(:func:`to_float`) and, for data augmentation, random horizontal flips (:func:`random_flip`), both of
which run on whatever device the batch lives on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from lcssm.data.digits import Scale
from lcssm.errors import DataError

RESAMPLE = Image.Resampling.BICUBIC  # PIL's filters widen with the downscale factor: antialiased
SCALES = ("zero_one", "minus_one_one")
CHANNEL_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def check_scale(scale: str) -> Scale:
    """Return ``scale`` if it is a known pixel scale, else raise DataError naming the choices."""
    if scale not in SCALES:
        raise DataError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    return scale  # type: ignore[return-value]


def check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    return resolution


def check_channels(channels: int) -> int:
    if channels not in CHANNEL_MODES:
        raise DataError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    return channels


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Crop the largest centred square, then resize it to ``resolution x resolution`` (bicubic).

    The crop happens before the resize on purpose: ``Image.resize(box=...)`` lets the filter taps read
    pixels outside the box, which would bleed the cropped-away borders into the result.
    """
    check_resolution(resolution)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), RESAMPLE)
    return image


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert to ``L`` (channels=1, ITU-R 601 luma) or ``RGB`` (channels=3); alpha is dropped.

    16-bit greyscale is rescaled to 8 bits (PIL's own conversion would clip everything above 255).
    """
    mode = CHANNEL_MODES[check_channels(channels)]
    if image.mode in _SIXTEEN_BIT_MODES:
        a = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return image if image.mode == mode else image.convert(mode)


def pil_to_uint8(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """EXIF-orient, convert, centre-crop and resize one image; return a uint8 array ``(C, R, R)``."""
    image = ImageOps.exif_transpose(image)
    image = center_crop_resize(convert_mode(image, channels), resolution)
    a = np.asarray(image, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def to_float(images: torch.Tensor | np.ndarray, scale: Scale = "minus_one_one") -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1] (``zero_one``) or [-1, 1] (``minus_one_one``).

    The result stays on the input's device.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise DataError(f"to_float expects uint8 pixels, got dtype {x.dtype}")
    if check_scale(scale) == "zero_one":
        return x.float() / 255.0
    return x.float() / 127.5 - 1.0


def random_flip(batch: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of ``batch`` (``(..., H, W)``, batch dim first) left-right with probability ``p``.

    One uniform per image is drawn from ``generator`` on the generator's device, so a seeded generator
    gives the same flips whatever device the batch is on.
    """
    if not 0.0 <= p <= 1.0:
        raise DataError(f"flip probability must be in [0, 1], got {p!r}")
    if batch.ndim < 3:
        raise DataError(f"random_flip expects a batch of images (N, ..., H, W), got shape {tuple(batch.shape)}")
    u = torch.rand(batch.shape[0], generator=generator, device=generator.device)
    flip = (u < p).to(batch.device).view(-1, *([1] * (batch.ndim - 1)))
    return torch.where(flip, batch.flip(-1), batch)
