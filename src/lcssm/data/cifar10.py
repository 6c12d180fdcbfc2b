"""CIFAR-10 from the official python-pickle batches (``cifar-10-batches-py``), read without running code.

Each batch file is a pickled dict with ``b"data"``, a uint8 array ``(N, 3072)`` whose rows are three
row-major 32x32 planes (red, green, blue), and ``b"labels"``, a list of N ints in 0..9. The files are
pickles, and unpickling can call any importable function; :class:`_ArrayUnpickler` resolves only the
handful of numpy names an array needs and refuses everything else.
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lcssm.errors import DataError

DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SIDE = 32
N_CLASSES = 10

Split = Literal["train", "test"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles (protocol < 3) use for bytes: ``_codecs.encode(text, "latin1")``, only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode allowed only as str -> latin1, got {encoding!r}")
    return text.encode("latin1")


class _ReadOnlyCall:
    """A callable whose attributes a pickle's BUILD opcode cannot overwrite (a bare function's can)."""

    __slots__ = ("_fn",)
    _fn: Callable[..., object]

    def __init__(self, fn: Callable[..., object]) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"{self._fn.__name__} is read-only")

    def __call__(self, *args):
        return self._fn(*args)


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 moved numpy.core to numpy._core; files name whichever numpy wrote them
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # pragma: no cover - numpy < 1.26
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    reconstruct = multiarray._reconstruct  # a builtin: attributes are read-only already
    frombuffer = _ReadOnlyCall(numeric._frombuffer)  # protocol 5: frombuffer(buf, dtype).reshape(...)
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _ReadOnlyCall(_latin1_encode),
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


# What a truncated, foreign or hostile pickle makes the (restricted) unpickler raise.
_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError)


class _ArrayUnpickler(pickle.Unpickler):
    """An Unpickler that can rebuild dicts, lists, strings, numbers and numpy arrays, and nothing else."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")


def safe_unpickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` allowing only plain containers and numpy arrays; DataError otherwise.

    ``encoding="bytes"`` keeps Python 2 ``str`` objects (as in the official CIFAR files) as bytes.
    """
    try:
        data = Path(path).read_bytes()
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e
    except _UNPICKLE_ERRORS as e:
        raise DataError(f"{str(path)!r} is not a valid CIFAR-10 batch pickle: {e}") from e


def find_batch_dir(root: str | os.PathLike) -> Path | None:
    """``root`` itself or ``root/cifar-10-batches-py``, whichever holds a CIFAR-10 batch file, else None."""
    root = Path(root)
    for d in (root, root / DIRNAME):
        if any((d / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return d
    return None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r}: expected a pickled dict, got {type(obj).__name__}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in entries or "labels" not in entries:
        raise DataError(f"{str(path)!r}: expected keys b'data' and b'labels', got {sorted(map(str, obj))}")
    data, labels = entries["data"], np.asarray(entries["labels"])
    n = len(labels)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (n, 3 * SIDE * SIDE):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{str(path)!r}: b'data' must be uint8 of shape ({n}, 3072), got {got}")
    if labels.ndim != 1 or (n > 0 and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{str(path)!r}: b'labels' must be a list of integers")
    if n and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(f"{str(path)!r}: labels must be in 0..{N_CLASSES - 1}")
    return data.reshape(n, 3, SIDE, SIDE), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike, split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` as uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``.

    ``root`` is the extracted ``cifar-10-batches-py`` folder or the folder containing it. ``train`` is
    ``data_batch_1`` .. ``data_batch_5`` concatenated in order (50000 images), ``test`` is
    ``test_batch`` (10000).
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR-10 split {split!r}; valid: train, test")
    names = TRAIN_FILES if split == "train" else TEST_FILES
    root = Path(root)
    batch_dir = find_batch_dir(root) or root
    missing = [f for f in names if not (batch_dir / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 {split} split needs {', '.join(names)} in {str(batch_dir)!r} (or in "
            f"{str(root / DIRNAME)!r}); missing: {', '.join(missing)}. Extract cifar-10-python.tar.gz there."
        )
    parts = [_read_batch(batch_dir / f) for f in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


__all__ = ["find_batch_dir", "load_cifar10", "safe_unpickle"]
