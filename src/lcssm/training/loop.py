"""The training loop shared by every lcssm run (toy densities, point files, images).

One function, :func:`train`, does: Adam/AdamW with linear warmup, gradient clipping, an EMA of the weights,
bf16 autocast on CUDA, optional ``torch.compile``, data parallelism under ``torchrun`` (DDP; NCCL on GPU, gloo
on CPU), crash-safe checkpoints (:mod:`lcssm.training.checkpoint`) with exact resume, a guard against non-finite
losses and gradients, and logs (``loss.csv``, ``metrics.jsonl``, TensorBoard when installed, a tqdm bar).

Reproducibility rests on two pure functions of the step: the batch (``batch_fn(step, rank, world_size)``)
and the seed of the generator handed to the loss (:func:`step_seed` of ``(seed, step, rank)``). Together with
the model, EMA, optimizer and scheduler state in the checkpoint, a run killed at any point and resumed
produces bit-identical parameters and the same loss log as an uninterrupted run (on CPU; CUDA kernels may
be non-deterministic). The global RNGs (python, numpy, torch) are saved and restored too, for models that
draw from them (e.g. dropout).

The parts live beside it in :mod:`lcssm.training`: ``batches`` (batch functions and ``step_seed``), ``config``
(:class:`TrainConfig`), ``blocks`` (optimizer, EMA, gradient norm), ``resume`` (resume and fresh start), ``stop``
(signals), ``logs`` (log files, diagnostics) and ``checkpoint`` (the checkpoint files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from lcssm import distributed
from lcssm.config import to_jsonable, validate
from lcssm.device import autocast, eval_mode, seed_everything
from lcssm.distributed import DistInfo
from lcssm.errors import ConfigError, LcssmError, ResourceError, is_out_of_memory
from lcssm.files import atomic_write_text, claim_run_dir
from lcssm.training.batches import (
    STREAM_NOISE,
    BatchFn,
    per_rank_batch_size,
    step_seed,
)
from lcssm.training.blocks import (
    ema_update,
    grad_norm,
    lr_factor,
    make_ema,
    make_optimizer,
    split_loss,
    to_device,
)
from lcssm.training.checkpoint import (
    FORMAT,
    checkpoint_path,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from lcssm.training.config import TrainConfig
from lcssm.training.logs import TrainLogs, diagnose, progress_bar, window_mean
from lcssm.training.resume import check_resumed_config, clear_checkpoints, newest_checkpoint, restore
from lcssm.training.stop import StopRequests, TrainingInterrupted

__all__ = [
    "Callback",
    "LossFn",
    "NonFiniteLossError",
    "PeriodicCallback",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "train",
]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, torch.Generator], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


class NonFiniteLossError(LcssmError):
    """The loss or gradient was non-finite for ``max_nonfinite`` consecutive steps; the run stopped without
    writing a checkpoint of its own (the last good one is intact). The CLI exits with :attr:`exit_code`."""

    exit_code = 3

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------ callbacks
@dataclass
class TrainState:
    """What a callback sees (rank 0 only). ``model`` is unwrapped (no DDP/compile); ``ema_model`` is the EMA
    copy, or ``model`` when EMA is off."""

    step: int
    total_steps: int
    model: nn.Module
    ema_model: nn.Module
    optimizer: torch.optim.Optimizer
    losses: list[float]
    out_dir: Path
    dist: DistInfo
    device: torch.device


Callback = Callable[[int, TrainState], None]


@dataclass
class PeriodicCallback:
    """Call ``fn(step, ema_model)`` every ``every`` steps (and at the last step when ``at_end``), with the EMA
    model in eval mode, e.g. to write a sample grid. Runs on rank 0; its use of the global RNGs does not
    affect training."""

    every: int
    fn: Callable[[int, nn.Module], None]
    at_end: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"every must be an int >= 1, got {self.every!r}")

    def __call__(self, step: int, state: TrainState) -> None:
        if step % self.every == 0 or (self.at_end and step == state.total_steps):
            with eval_mode(state.ema_model):
                self.fn(step, state.ema_model)


@contextlib.contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    """Restore the python, numpy and torch (CPU and ``device``) RNG states on exit."""
    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)  # noqa: NPY002


# ------------------------------------------------------------------------------------------------ result
@dataclass
class TrainResult:
    """``model`` is the trained module (unwrapped); ``ema_model`` its EMA copy (``model`` itself when
    ``ema_decay`` is 0): use it for sampling and evaluation. ``losses``/``grad_norms`` hold one value per
    step from step 1 (across resumes); a skipped non-finite step has its non-finite value."""

    model: nn.Module
    ema_model: nn.Module
    losses: list[float]
    steps: int
    train_seconds: float
    final_loss: float
    grad_norms: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    start_step: int = 0


# ------------------------------------------------------------------------------------------------- train
@dataclass
class _Run:
    """What one call of :func:`train` works on, shared by its parts: the settings, the training objects and
    the history, which :func:`_start` may restore from a checkpoint."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    config: dict
    raw: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[nn.Parameter]
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    start_step: int = 0
    elapsed: float = 0.0
    streak: int = 0
    last_ckpt: Path | None = None
    t0: float = 0.0
    created: bool = False
    stop: StopRequests = field(default_factory=StopRequests)
    last_save_t: float = 0.0


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batch_fn: BatchFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    run_config: dict | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    overwrite: bool = False,
    banner: str | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps; see the module docstring.

    ``loss_fn(model, batch, generator)`` returns a per-sample loss ``(B,)``, optionally with a dict of
    per-sample diagnostics (e.g. ``{"t": t, "sigma": std}``) that are logged when a step is non-finite; the
    trainer minimises its mean. ``model`` there is the training wrapper (DDP and/or compiled); reach the
    module itself with :func:`lcssm.distributed.unwrap`. ``batch_fn(step, rank, world_size)`` returns this
    rank's batch of step ``step`` (0-based) and must be a pure function of its arguments (see
    :func:`tensor_batches`, :func:`sampler_batches`); a ``state_dict``/``load_state_dict`` pair on it, if
    present, is saved in and restored from checkpoints.

    Files in ``out_dir`` (rank 0): ``config.json`` (``run_config`` with its ``train`` entry set to ``cfg``),
    ``loss.csv``, ``metrics.jsonl``, ``checkpoints/``. ``resume`` continues from the newest good checkpoint
    (falling back past corrupt ones) to ``cfg.steps`` in total; a run directory without checkpoints starts
    from step 0; the run's config must match the checkpoint's but for :data:`lcssm.training.resume.BOOKKEEPING`
    (else ConfigError with the differing fields). Without ``resume``, a directory that already holds checkpoints is
    refused unless ``overwrite``, which deletes them, and a non-empty directory lcssm did not create is refused.

    Checkpoints are written every ``cfg.ckpt_every`` steps, every ``cfg.ckpt_minutes`` of training and at the
    end. SIGINT, SIGTERM and SIGUSR1 finish the current step, write a checkpoint and raise
    :class:`~lcssm.training.stop.TrainingInterrupted` (exit code 130 / 143). Raises :class:`NonFiniteLossError` after
    ``cfg.max_nonfinite`` consecutive non-finite steps, ResourceError when memory runs out (removing the run
    directory if this call created it and wrote no checkpoint), CheckpointError when resuming finds only bad
    checkpoints. ``banner`` is printed to stderr (rank 0) once the run directory and any resume passed their
    checks.
    """
    run = _setup(model, cfg, out_dir, run_config)
    try:
        _start(run, batch_fn, resume=resume, overwrite=overwrite)
        logs = TrainLogs(run.out, run.start_step, run.losses, enabled=run.info.is_main)
    except BaseException:
        _discard_if_empty(run)
        raise
    if banner and run.info.is_main:
        print(banner, file=sys.stderr)
    fwd = _wrap(run)
    bar = progress_bar(run.cfg.steps, run.start_step, progress and run.info.is_main)
    try:
        with run.stop:
            _run_steps(run, fwd, loss_fn, batch_fn, callbacks, logs, bar)
    except BaseException as e:
        _discard_if_empty(run)
        if is_out_of_memory(e):
            raise ResourceError(f"out of memory in training step {len(run.losses) + 1} at batch size "
                                f"{run.cfg.batch_size} on {run.device}; use a smaller --batch-size") from None
        raise
    finally:
        if bar is not None:
            bar.close()
        if logs.enabled:
            logs.flush()
        logs.close()

    seconds = run.elapsed + time.perf_counter() - run.t0 if run.cfg.steps > run.start_step else run.elapsed
    return TrainResult(model=run.raw, ema_model=run.ema, losses=run.losses, steps=run.cfg.steps,
                       train_seconds=seconds, final_loss=run.losses[-1] if run.losses else math.nan,
                       grad_norms=run.grad_norms, checkpoint=run.last_ckpt, start_step=run.start_step)


def _setup(model: nn.Module, cfg: TrainConfig, out_dir: str | Path, run_config: dict | None) -> _Run:
    """Check the arguments, set up the process group and device, seed the global RNGs, and build the EMA,
    optimizer and scheduler; rank 0 creates ``out_dir`` and removes the temporaries a crash left there."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg = validate(cfg)
    if run_config is not None and not isinstance(run_config, dict):
        raise ConfigError(f"run_config must be a dict, got {type(run_config).__name__}")
    info, device = distributed.setup(cfg.device)
    per_rank_batch_size(cfg.batch_size, info.world_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output directory {out} is an existing file")
    config = to_jsonable(run_config or {})
    config["train"] = to_jsonable(cfg)

    seed_everything(cfg.seed + info.rank)
    raw = model.to(device)
    raw.train()
    ema = make_ema(raw, cfg.ema_decay)
    optimizer = make_optimizer(raw, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    created = False
    if info.is_main:
        created = claim_run_dir(out)
        remove_stale_temporaries(out)
    return _Run(cfg=cfg, info=info, device=device, out=out, config=config, raw=raw, ema=ema, optimizer=optimizer,
                scheduler=scheduler, params=params, created=created)


def _discard_if_empty(run: _Run) -> None:
    """Remove the run directory when this call created it and the run took no step (nothing worth keeping)."""
    if run.info.is_main and run.created and not run.losses and not list_checkpoints(run.out):
        shutil.rmtree(run.out, ignore_errors=True)


def _start(run: _Run, batch_fn: BatchFn, *, resume: bool, overwrite: bool) -> None:
    """With ``resume``, restore the newest good checkpoint into ``run`` (or start at step 0 when there is
    none); without, check (or, with ``overwrite``, clear) the run directory for a fresh start. Then rank 0
    writes ``config.json``."""
    cfg, info, out = run.cfg, run.info, run.out
    if resume:
        chosen = newest_checkpoint(out, info)
        if chosen is None:
            if info.is_main:
                log.warning("%s has no checkpoint to resume from; starting at step 0", out)
        else:
            run.last_ckpt = chosen
            state = load_checkpoint(chosen, map_location="cpu")
            check_resumed_config(state.get("config") or {}, run.config, chosen)
            run.start_step, run.elapsed, run.streak = restore(state, chosen, cfg, info, run.raw, run.ema,
                                                              run.optimizer, run.scheduler, batch_fn)
            run.losses = [float(v) for v in state["history"]["loss"].tolist()]
            run.grad_norms = [float(v) for v in state["history"]["grad_norm"].tolist()]
            if info.is_main:
                log.info("resuming %s from %s (step %d of %d)", out, chosen, run.start_step, cfg.steps)
    else:
        clear_checkpoints(out, info, overwrite)

    if info.is_main:
        atomic_write_text(out / "config.json", json.dumps(run.config, indent=2) + "\n")


def _wrap(run: _Run) -> nn.Module:
    """The module handed to the loss: the model, in DDP under torchrun, compiled when ``cfg.compile``."""
    fwd: nn.Module = run.raw
    if run.info.enabled:
        fwd = nn.parallel.DistributedDataParallel(
            run.raw, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=run.cfg.ddp_find_unused)
    if run.cfg.compile:
        fwd = cast(nn.Module, torch.compile(fwd))  # an OptimizedModule; torch types compile() as Callable -> Callable
    return fwd


def _run_steps(run: _Run, fwd: nn.Module, loss_fn: LossFn, batch_fn: BatchFn, callbacks: Sequence[Callback],
               logs: TrainLogs, bar: Any) -> None:
    """Steps ``start_step + 1 .. cfg.steps``: each trains (:func:`_step`), then logs (every ``log_every``
    steps and at the last), runs the callbacks (rank 0) and checkpoints (every ``ckpt_every`` steps and at
    the last)."""
    cfg, info = run.cfg, run.info
    state_view = TrainState(run.start_step, cfg.steps, run.raw, run.ema, run.optimizer, run.losses, run.out, info,
                            run.device)
    generator = torch.Generator(device=run.device)
    run.t0 = run.last_save_t = time.perf_counter()
    window_t, window_step = run.t0, run.start_step
    for step in range(run.start_step, cfg.steps):
        k = step + 1
        lr, stop, timed = _step(run, step, fwd, loss_fn, batch_fn, generator, logs)
        if k % cfg.log_every == 0 or k == cfg.steps:
            window_t, window_step = _log_window(run, k, lr, window_t, window_step, logs, bar)
        if bar is not None:
            bar.update(1)

        if info.is_main and callbacks:
            state_view.step = k
            with _rng_preserved(run.device):
                for cb in callbacks:
                    cb(k, state_view)
        if (cfg.ckpt_every and k % cfg.ckpt_every == 0) or k == cfg.steps or stop or timed:
            _save(run, k, batch_fn, logs)
        if stop:
            _interrupted(run, k)


def _interrupted(run: _Run, k: int) -> None:
    """Raise TrainingInterrupted for step ``k`` (its checkpoint is written), with the one line saying how to go on."""
    import signal

    signum = run.stop.signum or signal.SIGTERM  # a rank that got no signal stops with the others
    name = signal.Signals(signum).name
    message = (f"stopped by {name} after step {k} of {run.cfg.steps}; checkpoint {run.last_ckpt}; continue with "
               f"the same command and --resume")
    raise TrainingInterrupted(message, signum=signum, step=k, checkpoint=run.last_ckpt)


def _step(run: _Run, step: int, fwd: nn.Module, loss_fn: LossFn, batch_fn: BatchFn, generator: torch.Generator,
          logs: TrainLogs) -> tuple[float, bool, bool]:
    """Optimizer step ``step + 1`` on this rank; returns the learning rate it used, whether any rank was asked to
    stop (a signal) and whether rank 0's ``ckpt_minutes`` have passed since the last checkpoint (both agreed on by
    every rank through the step's all-reduce). A non-finite loss or gradient on any rank skips the update on all
    of them and is reported; :class:`NonFiniteLossError` after ``cfg.max_nonfinite`` such steps in a row."""
    cfg, info, k = run.cfg, run.info, step + 1
    batch = to_device(batch_fn(step, info.rank, info.world_size), run.device)
    generator.manual_seed(step_seed(cfg.seed, step, info.rank, STREAM_NOISE))
    with autocast(run.device, cfg.amp):
        per_sample, diag = split_loss(loss_fn(fwd, batch, generator))
    loss = per_sample.float().mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # on every rank, even a non-finite loss: DDP's all-reduce needs all of them
    gnorm = grad_norm(run.params, cfg.grad_clip).to(run.device)
    ok = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
    due = info.is_main and cfg.ckpt_minutes > 0 and time.perf_counter() - run.last_save_t >= 60 * cfg.ckpt_minutes
    flags = torch.tensor([float(run.stop.signum > 0), float(due)], device=loss.device)
    reduced = distributed.all_reduce_sum(torch.cat([torch.stack([loss.detach(), (~ok).float()]), flags]), info)
    loss_sum, n_bad, n_stop, n_due, gn = torch.cat([reduced, gnorm.reshape(1).float()]).tolist()
    loss_val = loss_sum / info.world_size
    lr = run.scheduler.get_last_lr()[0]
    if n_bad > 0:
        run.optimizer.zero_grad(set_to_none=True)
        run.streak += 1
        if info.is_main:
            report = {"step": k, "event": "nonfinite", "loss": loss_val, "grad_norm": gn, "lr": lr,
                      "streak": run.streak, "ranks_affected": int(n_bad),
                      "diagnostics": diagnose(per_sample, diag)}
            logs.record(report)
            log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s), step skipped "
                        "(%d in a row, stop at %d); diagnostics: %s", k, loss_val, gn, run.streak,
                        cfg.max_nonfinite, json.dumps(report["diagnostics"]))
    else:
        run.optimizer.step()
        ema_update(run.ema, run.raw, cfg.ema_decay)
        run.streak = 0
    run.scheduler.step()
    run.losses.append(loss_val)
    run.grad_norms.append(gn)
    logs.loss(k, loss_val)

    if run.streak >= cfg.max_nonfinite:
        streak, last_ckpt = run.streak, run.last_ckpt
        where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written"
        raise NonFiniteLossError(
            f"loss or gradient non-finite for {streak} consecutive steps (steps {k - streak + 1}-{k}; last "
            f"loss={loss_val}, grad_norm={gn}); run stopped, {where}; details in {run.out / 'metrics.jsonl'}",
            step=k, checkpoint=last_ckpt)
    return lr, n_stop > 0, n_due > 0


def _log_window(run: _Run, k: int, lr: float, window_t: float, window_step: int, logs: TrainLogs,
                bar: Any) -> tuple[float, int]:
    """Record steps ``window_step + 1 .. k`` (mean loss and gradient norm, throughput) in metrics.jsonl,
    TensorBoard and the bar; returns the start ``(time, step)`` of the next window."""
    losses = run.losses
    now = time.perf_counter()
    rec = {"step": k, "loss": window_mean(losses[window_step:k]),
           "grad_norm": window_mean(run.grad_norms[window_step:k]), "lr": lr,
           "seconds": run.elapsed + now - run.t0,
           "samples_per_s": (k - window_step) * run.cfg.batch_size / max(now - window_t, 1e-9),
           "nonfinite": sum(not math.isfinite(v) for v in losses[window_step:k])}
    logs.record(rec)
    if bar is not None:
        bar.set_postfix(loss=f"{rec['loss']:.4g}", samples_s=f"{rec['samples_per_s']:.3g}", refresh=False)
    return now, k


def _save(run: _Run, k: int, batch_fn: BatchFn, logs: TrainLogs) -> None:
    """Checkpoint step ``k``: every rank's global RNG states are gathered, rank 0 writes the file (after
    flushing the logs) and prunes old ones, and all ranks wait for it."""
    cfg, info = run.cfg, run.info
    rng = distributed.all_gather_object(get_rng_state(), info)
    if info.is_main:
        path = checkpoint_path(run.out, k)
        logs.flush()
        save_checkpoint(path, {
            "format": FORMAT,
            "step": k,
            "model": run.raw.state_dict(),
            "ema": None if run.ema is run.raw else run.ema.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "train_config": to_jsonable(cfg),
            "config": run.config,
            "rng": rng,
            "data": {"seed": cfg.seed, "next_step": k,
                     "state": batch_fn.state_dict() if hasattr(batch_fn, "state_dict") else None},
            "history": {"loss": torch.tensor(run.losses, dtype=torch.float64),
                        "grad_norm": torch.tensor(run.grad_norms, dtype=torch.float64)},
            "nonfinite_streak": run.streak,
            "elapsed": run.elapsed + time.perf_counter() - run.t0,
            "world_size": info.world_size,
            "torch_version": str(torch.__version__),
        })
        prune_checkpoints(run.out, cfg.keep_last)
        run.last_ckpt = path
        run.last_save_t = time.perf_counter()
    else:
        run.last_ckpt = checkpoint_path(run.out, k)
    distributed.barrier(info)
