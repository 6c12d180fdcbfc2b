"""Crash-safe checkpoints: atomic writes with a SHA-256 beside each file, weights-only loading, fallback to the
previous good checkpoint, and safetensors export of the EMA weights.

Layout inside a run directory::

    checkpoints/ckpt_{step:08d}.pt          torch.save of a dict of tensors and plain containers
    checkpoints/ckpt_{step:08d}.pt.sha256   "<hex digest>  ckpt_{step:08d}.pt" (``sha256sum -c`` reads it)

A checkpoint is written to a temporary file in the same directory, fsync'ed, renamed over the final name
(atomic on POSIX), then its checksum file is written the same way: a crash leaves either the previous state,
or a checkpoint without a checksum file, which is treated as incomplete. Loading always uses
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lcssm.errors import CheckpointError
from lcssm.files import atomic_write_bytes, check_new_file, file_digest, replace_synced, temporary_path

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT",
    "checkpoint_dir",
    "checkpoint_path",
    "export_ema",
    "get_rng_state",
    "latest_good_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FORMAT = "lcssm-train-checkpoint-v1"
_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")


# ------------------------------------------------------------------------------------------------ naming
def checkpoint_dir(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints`` (or ``run_dir`` itself if it is already that folder)."""
    run_dir = Path(run_dir)
    return run_dir if run_dir.name == CHECKPOINT_DIR else run_dir / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in the run, oldest first (whether or not it is intact)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


# ------------------------------------------------------------------------------------------ write / read
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> str:
    """Write ``state`` (tensors and plain containers only) to ``path`` atomically, then its SHA-256 to
    ``path.sha256``; returns the digest. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        digest = file_digest(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n".encode())
    _fsync_dir(path.parent)
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, verify: bool = True) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    With ``verify`` (the default) the file's SHA-256 must match its ``.sha256`` file. Raises CheckpointError
    naming the file when it is missing, has no checksum file, fails the checksum (corrupt or truncated), is
    not a torch checkpoint, or contains objects other than tensors and plain containers (refused unread).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if verify:
        side = _sidecar(path)
        if not side.is_file():
            raise CheckpointError(f"checkpoint {path} has no checksum file {side.name}; it may be incomplete")
        expected = side.read_text(errors="replace").split()
        actual = file_digest(path)
        if not expected or expected[0].lower() != actual:
            raise CheckpointError(f"checkpoint {path} fails its SHA-256 check ({path.stat().st_size} bytes): "
                                  "the file is corrupt or truncated")
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of foreign pickles it then refuses
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip().removeprefix("WeightsUnpickler error: ") for ln in str(e).splitlines() if ln.strip()]
        why = [ln for ln in lines if ln.startswith("Unsupported")]
        first = (why or lines or [type(e).__name__])[0]
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain "
                              f"containers, which weights-only loading does not execute ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _check_training_state(state: dict, path: Path) -> None:
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lcssm training checkpoint (format {state.get('format')!r}, "
                              f"expected {FORMAT!r})")
    missing = [k for k in ("step", "model", "train_config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")


def latest_good_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict] | None:
    """The newest checkpoint of the run that loads and verifies, as ``(path, state)``; None when the run has
    no checkpoint at all.

    A bad newer checkpoint is reported (a warning naming the file and what is wrong with it) and the previous
    one is tried. Raises CheckpointError listing every file when checkpoints exist but none is usable.
    """
    problems = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location)
            _check_training_state(state, path)
        except CheckpointError as e:
            log.warning("skipping bad checkpoint %s: %s; trying the previous one", path, e)
            problems.append(str(e))
            continue
        if problems:
            log.warning("using checkpoint %s (step %d) after skipping %d bad newer one(s)", path, state["step"],
                        len(problems))
        return path, state
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_dir(run_dir)}: " + "; ".join(problems))
    return None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (and their checksum files); returns the deleted."""
    ckpts = list_checkpoints(run_dir)
    doomed = [p for _, p in ckpts[: max(0, len(ckpts) - keep_last)]]
    for p in doomed:
        p.unlink(missing_ok=True)
        _sidecar(p).unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete temporary files left by a process killed while writing a checkpoint."""
    d = checkpoint_dir(run_dir)
    if d.is_dir():
        for p in d.glob(".ckpt_*.tmp"):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and CUDA generator states as tensors and plain containers."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global state is what we save
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({  # noqa: NPY002
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
        "has_gauss": int(n["has_gauss"]),
        "gauss": float(n["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ------------------------------------------------------------------------------------------ consumers
def _weights(state: dict) -> dict[str, torch.Tensor]:
    return state["ema"] if state.get("ema") is not None else state["model"]


def load_run(run_dir: str | Path, model_factory: Callable[[dict], nn.Module] | None = None,
             map_location: str | torch.device = "cpu") -> tuple[dict, Any]:
    """The run's config and its EMA weights from the newest good checkpoint (for samplers and evaluation).

    Returns ``(config, ema_state_dict)``; the config is the run's ``config.json`` content (the run config
    with its ``train`` entry), as saved in the checkpoint. With ``model_factory(config) -> nn.Module`` the
    second item is that model with the EMA weights loaded (strictly) and in eval mode instead. Runs trained
    without EMA give their model weights. Raises CheckpointError when the run has no usable checkpoint.
    """
    found = latest_good_checkpoint(run_dir, map_location)
    if found is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)}")
    path, state = found
    config = dict(state.get("config") or {})
    weights = _weights(state)
    if model_factory is None:
        return config, weights
    model = model_factory(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit the model built from its config: "
                              f"{' '.join(str(e).split())}") from None
    return config, model.to(map_location).eval()


def export_ema(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the EMA weights (the model weights for a run without EMA) of the newest good checkpoint as
    safetensors (default ``run_dir/ema.safetensors``), with the run config (JSON) and step in its metadata.

    The keys are the backbone network's own (without the ``backbone.`` prefix of the run's ScoreModel): load it
    without lcssm's trainer into the network, ``net.load_state_dict(safetensors.torch.load_file(path))``, and
    wrap it as the run does (:class:`lcssm.models.precond.ScoreModel`, settings in the metadata's config).
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise CheckpointError("exporting needs the safetensors package: pip install 'lcssm[export]'") from None
    found = latest_good_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} to export")
    path, state = found
    # the backbone network's own keys (a run's model is lcssm.models.precond.ScoreModel, which holds it as .backbone)
    weights = {k.removeprefix("backbone."): v for k, v in _weights(state).items()}
    # safetensors refuses shared or non-contiguous storage: give every tensor its own contiguous copy
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in weights.items()}
    metadata = {
        "format": "lcssm-ema" if state.get("ema") is not None else "lcssm-model",
        "step": str(state["step"]),
        "source": path.name,
        "config": json.dumps(state.get("config") or {}),
    }
    dest = Path(out) if out is not None else Path(run_dir) / "ema.safetensors"
    if dest.is_dir():
        raise IsADirectoryError(f"export destination {dest} is a directory; give a file name, e.g. "
                                f"{dest / 'ema.safetensors'}")
    check_new_file(dest, overwrite=overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(dest)
    save_file(tensors, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the mode of every other file lcssm writes (safetensors creates 0600)
    replace_synced(tmp, dest)
    return dest
