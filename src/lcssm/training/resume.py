"""How a run of :func:`lcssm.training.loop.train` starts from its run directory: resuming from the newest good
checkpoint
(:func:`newest_checkpoint`, then :func:`restore` of the model, EMA, optimizer, scheduler, global RNG and data
states) or, for a fresh run, refusing or clearing the checkpoints already there (:func:`clear_checkpoints`).
Decisions about the files are taken on rank 0 and handed to every rank (:func:`on_main`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcssm import distributed
from lcssm.device import seed_everything
from lcssm.distributed import DistInfo
from lcssm.errors import CheckpointError, ConfigError, LcssmError
from lcssm.training.batches import STREAM_RESEED, BatchFn, step_seed
from lcssm.training.checkpoint import latest_good_checkpoint, list_checkpoints, set_rng_state
from lcssm.training.config import TrainConfig

__all__ = ["BOOKKEEPING", "check_resumed_config", "clear_checkpoints", "newest_checkpoint", "on_main", "restore"]

# the trainer's messages, whichever of its modules logs them
log = logging.getLogger("lcssm.training.loop")

def on_main(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its LcssmError) to every rank."""
    result, error, original = None, None, None
    if info.is_main:
        try:
            result = fn()
        except LcssmError as e:
            error, original = (type(e), str(e)), e
    result, error = distributed.broadcast_object((result, error), info)
    if original is not None:
        raise original
    if error is not None:
        raise error[0](error[1])
    return result


#: settings that may change on resume without changing what is computed
BOOKKEEPING = frozenset({"steps", "ckpt_every", "ckpt_minutes", "keep_last", "log_every", "max_nonfinite", "device",
                         "compile"})
#: sections of a run config that do not take part in training (how it is sampled and shown afterwards)
AFTER_TRAINING = ("sampler", "grids")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def check_resumed_config(saved: dict, given: dict, path: Path) -> None:
    """ConfigError listing every field in which the run config ``given`` differs from the one saved with the
    checkpoint ``path``, except the trainer's bookkeeping (``train.steps``, checkpoint and log cadence, device,
    ...) and what only concerns sampling afterwards: resuming must continue the same experiment. ``train.steps``
    may grow only without a learning-rate decay, whose schedule it sets."""
    old, new = _flat(saved), _flat(given)
    decay = old.get("train.lr_decay", "none")
    pinned = {"train.steps": f" (with lr_decay {decay!r} the steps total sets the learning rate of every step, so "
                             "it cannot change)"} if decay != "none" else {}  # bookkeeping this run cannot change
    differing = [f"{k}: {old.get(k, '(absent)')!r} in the run, {new.get(k, '(absent)')!r} now{pinned.get(k, '')}"
                 for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k) and k.split(".")[0] not in AFTER_TRAINING
                 and not (k.startswith("train.") and k.removeprefix("train.") in BOOKKEEPING and k not in pinned)]
    if differing:
        raise ConfigError(f"--resume continues the run in {path.parent.parent} as it was trained; these settings "
                          f"differ: {'; '.join(differing)}. Use the run's settings, or another --out for a new run")


def newest_checkpoint(out: Path, info: DistInfo) -> Path | None:
    """The newest good checkpoint in ``out`` (falling back past corrupt ones), as found by rank 0; None when
    there is none."""
    def pick() -> str | None:
        found = latest_good_checkpoint(out)
        return None if found is None else str(found[0])

    chosen = on_main(info, pick)
    return None if chosen is None else Path(chosen)


def clear_checkpoints(out: Path, info: DistInfo, overwrite: bool) -> None:
    """Before a fresh run: CheckpointError when ``out`` already holds checkpoints, unless ``overwrite``, which
    deletes them (and their checksums)."""
    def check_fresh() -> None:
        existing = list_checkpoints(out)
        if existing and not overwrite:
            raise CheckpointError(f"{out} already holds checkpoints of a run (newest: step {existing[-1][0]}); "
                                  "pass --resume to continue it, or use another output directory")
        for _, p in existing:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".sha256").unlink(missing_ok=True)

    on_main(info, check_fresh)


def restore(state: dict, path: Path, cfg: TrainConfig, info: DistInfo, raw: nn.Module, ema: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, batch_fn: BatchFn) -> tuple[int, float, int]:
    """Load a checkpoint's states into the training objects; returns (step, elapsed seconds, streak)."""
    step = int(state["step"])
    if step > cfg.steps:
        raise ConfigError(f"steps {cfg.steps} is below the step {step} of {path}, which --resume continues from")
    try:
        raw.load_state_dict(state["model"])
        if ema is not raw:
            ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this model/optimizer: {' '.join(str(e).split())}") from None
    scheduler.load_state_dict(state["scheduler"])
    rngs = state.get("rng") or []
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        seed_everything(step_seed(cfg.seed, step, info.rank, STREAM_RESEED) % 2**32)
        if info.is_main:
            log.warning("%s was written by %d rank(s), this run has %d: global RNGs re-seeded, not restored",
                        path, len(rngs), info.world_size)
    data_state = (state.get("data") or {}).get("state")
    if data_state is not None and hasattr(batch_fn, "load_state_dict"):
        batch_fn.load_state_dict(data_state)
    return step, float(state.get("elapsed", 0.0)), int(state.get("nonfinite_streak", 0))
