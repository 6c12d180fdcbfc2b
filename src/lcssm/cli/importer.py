"""``lcssm import score-sde CKPT --preset NAME --out RUN_DIR`` and ``lcssm import ncsnv2 CKPT ...``: a published
checkpoint (yang-song/score_sde_pytorch, ermongroup/ncsnv2) converted by :mod:`lcssm.models.convert` into a run
directory that ``lcssm sample``, ``bpd`` and ``fid`` use as is.

The run's spec is the preset's (:func:`lcssm.experiments.presets.image_spec`: network, SDE, sampler); its one
checkpoint, in the trainer's format, holds the checkpoint's EMA weights (as both ``model`` and ``ema``) at the
checkpoint's step. The checkpoint file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lcssm.errors import CheckpointError, ConfigError

__all__ = ["import_checkpoint", "register"]

_FORMATS = {"score-sde": "score_sde_pytorch (NCSN++ / DDPM++ presets)", "ncsnv2": "ermongroup/ncsnv2 (NCSNv2 presets)"}


def _read(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``: a file holding other objects than tensors and containers is
    refused (CheckpointError), never unpickled."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain containers, "
                              f"which weights-only loading does not execute ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {' '.join(str(e).split())}") from None


def import_checkpoint(fmt: str, checkpoint: str | Path, preset: str, out: str | Path, *,
                      data: str | None = None) -> Path:
    """Convert ``checkpoint`` (format ``score-sde`` or ``ncsnv2``) into the run directory ``out`` with the spec of
    ``preset`` on ``data`` (None: the digits, for the presets that train on them). Returns the checkpoint path."""
    import torch

    from lcssm.config import to_jsonable
    from lcssm.experiments.presets import ImagePreset, image_spec
    from lcssm.files import atomic_write_text, claim_run_dir
    from lcssm.models.convert import from_ncsnv2, from_score_sde
    from lcssm.models.ncsnv2 import NCSNv2
    from lcssm.models.unet import UNet
    from lcssm.training.checkpoint import FORMAT, checkpoint_path, list_checkpoints, save_checkpoint

    if fmt not in _FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; valid: {', '.join(_FORMATS)}")
    # resolved: its SDE's parameters, the data's grey levels; score_sde's parametrisation, that of the checkpoints
    spec = image_spec(ImagePreset(preset=preset, precond="score_sde"), data)
    state = _read(checkpoint)
    model = (from_score_sde if fmt == "score-sde" else from_ncsnv2)(state, preset)
    net = model.backbone
    assert isinstance(net, UNet | NCSNv2)  # what the converters build
    if (int(spec.data.shape[1]), int(spec.data.shape[0])) != (net.config.image_size, net.config.in_channels):
        raise ConfigError(f"preset {preset!r} on {spec.data.source} gives {spec.data.shape} images, the published "
                          f"network is {net.config.in_channels}x{net.config.image_size}^2")
    if isinstance(state, dict):
        step = state.get("step", 0)
    else:
        step = state[3] if len(state) > 3 else 0
    step = int(step) if isinstance(step, int | float) or torch.is_tensor(step) else 0
    claim_run_dir(out)
    if list_checkpoints(out):
        raise ConfigError(f"{out} already holds checkpoints; import into a new directory")
    weights = model.state_dict()
    config = spec.to_dict()
    atomic_write_text(Path(out) / "config.json", json.dumps(config, indent=2) + "\n")
    path = checkpoint_path(out, step)
    save_checkpoint(path, {
        "format": FORMAT, "step": step, "model": weights, "ema": weights, "train_config": to_jsonable(spec.train),
        "config": config, "imported_from": {"format": fmt, "file": str(checkpoint)},
        "history": {"loss": torch.zeros(0, dtype=torch.float64), "grad_norm": torch.zeros(0, dtype=torch.float64)},
        "torch_version": str(torch.__version__),
    })
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a published score_sde or ncsnv2 checkpoint into a run directory",
                       description="Convert a published checkpoint into a run directory (the preset's spec and the "
                       "checkpoint's EMA weights) that lcssm sample, bpd and fid use as is.")
    p.add_argument("format", choices=tuple(_FORMATS), help="; ".join(f"{k}: {v}" for k, v in _FORMATS.items()))
    p.add_argument("checkpoint", help="the checkpoint file (read with torch.load(weights_only=True))")
    p.add_argument("--preset", required=True, help="the lcssm preset of the published network, e.g. "
                   "ncsnpp_deep_cifar10, ddpmpp_deep_cifar10, ncsnpp_celebahq1024, ncsnv2_cifar10")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--data", default=None, help="the run's data (an image folder or cifar-10-batches-py), used by "
                   "bpd and fid; needed for presets that do not train on the digits")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    path = import_checkpoint(args.format, args.checkpoint, args.preset, args.out, data=args.data)
    print(f"wrote {path}; sample with: lcssm sample {args.out}", file=sys.stderr)
    return 0
