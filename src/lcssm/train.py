"""The training loop shared by every lcssm run (toy densities, point files, images).

One function, :func:`train`, does: Adam/AdamW with linear warmup, gradient clipping, an EMA of the weights,
bf16 autocast on CUDA, optional ``torch.compile``, data parallelism under ``torchrun`` (DDP; NCCL on GPU, gloo
on CPU), crash-safe checkpoints (:mod:`lcssm.checkpoint`) with exact resume, a guard against non-finite
losses and gradients, and logs (``loss.csv``, ``metrics.jsonl``, TensorBoard when installed, a tqdm bar).

Reproducibility rests on two pure functions of the step: the batch (``batch_fn(step, rank, world_size)``)
and the seed of the generator handed to the loss (:func:`step_seed` of ``(seed, step, rank)``). Together with
the model, EMA, optimizer and scheduler state in the checkpoint, a run killed at any point and resumed
produces bit-identical parameters and the same loss log as an uninterrupted run (on CPU; CUDA kernels may
be non-deterministic). The global RNGs (python, numpy, torch) are saved and restored too, for models that
draw from them (e.g. dropout).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor, nn

from lcssm import distributed
from lcssm.checkpoint import (
    FORMAT,
    checkpoint_path,
    get_rng_state,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
)
from lcssm.config import TrainConfig, to_jsonable, validate
from lcssm.device import autocast, eval_mode, make_generator, seed_everything
from lcssm.distributed import DistInfo
from lcssm.errors import CheckpointError, ConfigError, DataError, LcssmError
from lcssm.files import atomic_write_text

__all__ = [
    "BatchFn",
    "Callback",
    "LossFn",
    "NonFiniteLossError",
    "PeriodicCallback",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "sampler_batches",
    "step_seed",
    "tensor_batches",
    "train",
]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, torch.Generator], "Tensor | tuple[Tensor, dict[str, Tensor]]"]
BatchFn = Callable[[int, int, int], Any]

# independent random streams derived from the run seed
_STREAM_NOISE, _STREAM_SAMPLER, _STREAM_PERMUTATION = 0, 1, 2


class NonFiniteLossError(LcssmError):
    """The loss or gradient was non-finite for ``max_nonfinite`` consecutive steps; the run stopped without
    writing a checkpoint of its own (the last good one is intact). The CLI exits with :attr:`exit_code`."""

    exit_code = 3

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------- randomness
def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that is a pure function of ``(seed, step, rank, stream)``, mixed by NumPy's SeedSequence
    (no Python ``hash``, which is salted per process): neighbouring steps and ranks get unrelated streams."""
    words = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def _per_rank(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the world size {world_size}; "
                          f"use a multiple of {world_size}")
    return batch_size // world_size


# ------------------------------------------------------------------------------------------------ data
def sampler_batches(sample: Callable[[int, torch.Generator], Tensor], batch_size: int, seed: int) -> BatchFn:
    """``batch_fn`` drawing fresh points from ``sample(n, generator)`` (e.g. a toy distribution).

    Step k's global batch is ``sample(batch_size, generator seeded from (seed, k))``; rank r of W gets rows
    ``[r·b, (r+1)·b)`` with ``b = batch_size // W``. The data a step sees therefore does not depend on the
    number of ranks (each rank draws the global batch, which is cheap for the samplers this is meant for).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

    def batch_fn(step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        b = _per_rank(batch_size, world_size)
        x = sample(batch_size, make_generator(step_seed(seed, step, 0, _STREAM_SAMPLER)))
        return x[rank * b:(rank + 1) * b]

    return batch_fn


class tensor_batches:  # noqa: N801 - used like a function; a class only to hold its permutation cache
    """``batch_fn`` over a fixed dataset: epochs of random permutations derived from ``(seed, epoch)``.

    The data are read as one endless stream (epoch 0's permutation, then epoch 1's, ...); step k's global
    batch is positions ``[k·B, (k+1)·B)`` of it and rank r of W takes its r-th slice of ``B // W`` rows, so a
    step sees the same rows whatever the number of ranks, every point is seen once per epoch, and a batch
    may straddle two epochs (no point is dropped, and datasets smaller than a batch work).
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int) -> None:
        if not isinstance(data, Tensor) or data.dim() < 1 or len(data) == 0:
            raise DataError(f"tensor_batches needs a non-empty tensor of shape (n, ...), got "
                            f"{getattr(data, 'shape', type(data).__name__)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = make_generator(step_seed(self.seed, epoch, 0, _STREAM_PERMUTATION))
            self._perms[epoch] = torch.randperm(len(self.data), generator=g)
        return self._perms[epoch]

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        b = _per_rank(self.batch_size, world_size)
        n = len(self.data)
        pos = step * self.batch_size + rank * b + torch.arange(b, dtype=torch.int64)
        epoch, offset = pos // n, pos % n
        idx = torch.empty(b, dtype=torch.int64)
        for e in epoch.unique().tolist():
            sel = epoch == e
            idx[sel] = self.permutation(int(e))[offset[sel]]
        return self.data[idx.to(self.data.device)]


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


# ------------------------------------------------------------------------------------------- building blocks
def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def _warmup_factor(warmup: int) -> Callable[[int], float]:
    """Linear warmup: the i-th step (0-based) uses ``lr·min(1, (i+1)/warmup)``."""
    return lambda i: 1.0 if warmup <= 0 else min(1.0, (i + 1) / warmup)


def _make_ema(model: nn.Module, decay: float) -> nn.Module:
    if decay == 0:
        return model
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``θ_ema ← decay·θ_ema + (1 − decay)·θ`` for parameters; buffers (e.g. norm statistics) are copied."""
    if ema is model:
        return
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _grad_norm(params: list[nn.Parameter], clip: float) -> Tensor:
    """Global L2 norm of the gradients (clipping them to ``clip`` when > 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _split_loss(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], dict):
            raise TypeError("loss_fn must return a per-sample loss tensor or (loss, diagnostics dict)")
        loss, diag = out
    else:
        loss, diag = out, {}
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    return loss, diag


def _finite_or_str(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _jsonable_record(rec: dict) -> dict:
    return {k: _finite_or_str(v) if isinstance(v, float) else v for k, v in rec.items()}


def _diagnose(per_sample: Tensor, diag: dict[str, Tensor], limit: int = 8) -> dict[str, Any]:
    """Where a non-finite loss came from: the bad samples' indices and their diagnostics (e.g. t, sigma,
    loss terms), plus each diagnostic's range over the batch."""
    ps = per_sample.detach().float().reshape(-1)
    bad = (~torch.isfinite(ps)).nonzero().reshape(-1)
    out: dict[str, Any] = {"n_samples": ps.numel(), "n_nonfinite_samples": int(bad.numel()),
                           "nonfinite_indices": bad[:limit].tolist()}
    for name, value in diag.items():
        if not isinstance(value, Tensor):
            continue
        v = value.detach().float().reshape(-1).cpu()
        entry: dict[str, Any] = {}
        if v.numel():
            fin = v[torch.isfinite(v)]
            entry["min"] = _finite_or_str(float(fin.min())) if fin.numel() else "nan"
            entry["max"] = _finite_or_str(float(fin.max())) if fin.numel() else "nan"
            entry["n_nonfinite"] = int(v.numel() - fin.numel())
        if v.numel() == ps.numel() and bad.numel():
            entry["at_nonfinite"] = [_finite_or_str(float(x)) for x in v[bad[:limit].cpu()]]
        out[name] = entry
    return out


# ------------------------------------------------------------------------------------------------- logs
class _Logs:
    """Rank 0's files: loss.csv (every step), metrics.jsonl (every log_every steps and events), TensorBoard."""

    def __init__(self, out: Path, start_step: int, losses: list[float], enabled: bool) -> None:
        self.enabled = enabled
        self.loss_csv: TextIO | None = None
        self.metrics: TextIO | None = None
        self.tb = None
        if not enabled:
            return
        atomic_write_text(out / "loss.csv", "step,loss\n" + "".join(f"{i + 1},{v!r}\n" for i, v in enumerate(losses)))
        kept = []
        metrics_path = out / "metrics.jsonl"
        if start_step and metrics_path.exists():
            for line in metrics_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by a crash
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= start_step:
                    kept.append(line + "\n")
        atomic_write_text(metrics_path, "".join(kept))
        self.loss_csv = open(out / "loss.csv", "a")  # noqa: SIM115 - closed in close()
        self.metrics = open(metrics_path, "a")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)

    def loss(self, step: int, value: float) -> None:
        if self.loss_csv is not None:
            self.loss_csv.write(f"{step},{value!r}\n")

    def record(self, rec: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(_jsonable_record(rec)) + "\n")
            self.metrics.flush()
        if self.tb is not None and "event" not in rec:
            for key in ("loss", "grad_norm", "lr", "samples_per_s"):
                if isinstance(rec.get(key), float):
                    self.tb.add_scalar(f"train/{key}", rec[key], rec["step"])

    def flush(self) -> None:
        for f in (self.loss_csv, self.metrics):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self.loss_csv, self.metrics):
            if f is not None and not f.closed:
                f.close()
        if self.tb is not None:
            self.tb.close()


def _window_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


# ------------------------------------------------------------------------------------------------ resume
def _on_main(info: DistInfo, fn: Callable[[], Any]) -> Any:
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
_BOOKKEEPING = frozenset({"steps", "ckpt_every", "keep_last", "log_every", "max_nonfinite", "device", "compile"})


def _config_changes(old: dict, new: dict) -> list[str]:
    return [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new
            if k in old and old[k] != new[k] and k not in _BOOKKEEPING]


# ------------------------------------------------------------------------------------------------- train
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
    from step 0. Without ``resume``, a directory that already holds checkpoints is refused unless
    ``overwrite``, which deletes them. Raises :class:`NonFiniteLossError` after ``cfg.max_nonfinite``
    consecutive non-finite steps, CheckpointError when resuming finds only bad checkpoints.
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg = validate(cfg)
    if run_config is not None and not isinstance(run_config, dict):
        raise ConfigError(f"run_config must be a dict, got {type(run_config).__name__}")
    info, device = distributed.setup(cfg.device)
    _per_rank(cfg.batch_size, info.world_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output directory {out} is an existing file")
    config = to_jsonable(run_config or {})
    config["train"] = to_jsonable(cfg)

    seed_everything(cfg.seed + info.rank)
    raw = model.to(device)
    raw.train()
    ema = _make_ema(raw, cfg.ema_decay)
    optimizer = _make_optimizer(raw, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_factor(cfg.warmup))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    grad_norms: list[float] = []
    start_step, elapsed, streak = 0, 0.0, 0
    last_ckpt: Path | None = None

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    if resume:
        def pick() -> str | None:
            found = latest_good_checkpoint(out)
            return None if found is None else str(found[0])

        chosen = _on_main(info, pick)
        if chosen is None:
            if info.is_main:
                log.warning("%s has no checkpoint to resume from; starting at step 0", out)
        else:
            last_ckpt = Path(chosen)
            state = load_checkpoint(last_ckpt, map_location="cpu")
            start_step, elapsed, streak = _restore(state, last_ckpt, cfg, info, raw, ema, optimizer, scheduler,
                                                   batch_fn)
            losses = [float(v) for v in state["history"]["loss"].tolist()]
            grad_norms = [float(v) for v in state["history"]["grad_norm"].tolist()]
            if info.is_main:
                log.info("resuming %s from %s (step %d of %d)", out, last_ckpt, start_step, cfg.steps)
    else:
        def check_fresh() -> None:
            existing = list_checkpoints(out)
            if existing and not overwrite:
                raise CheckpointError(f"{out} already holds checkpoints of a run (newest: step {existing[-1][0]}); "
                                      "pass --resume to continue it, or use another output directory")
            for _, p in existing:
                p.unlink(missing_ok=True)
                p.with_name(p.name + ".sha256").unlink(missing_ok=True)

        _on_main(info, check_fresh)

    if info.is_main:
        atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    logs = _Logs(out, start_step, losses, enabled=info.is_main)

    fwd: nn.Module = raw
    if info.enabled:
        fwd = nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp_find_unused)
    if cfg.compile:
        fwd = torch.compile(fwd)

    state_view = TrainState(start_step, cfg.steps, raw, ema, optimizer, losses, out, info, device)
    generator = torch.Generator(device=device)
    bar = _progress_bar(cfg.steps, start_step, progress and info.is_main)
    t0 = time.perf_counter()
    window_t, window_step = t0, start_step

    def save(k: int) -> None:
        nonlocal last_ckpt
        rng = distributed.all_gather_object(get_rng_state(), info)
        if info.is_main:
            path = checkpoint_path(out, k)
            logs.flush()
            save_checkpoint(path, {
                "format": FORMAT,
                "step": k,
                "model": raw.state_dict(),
                "ema": None if ema is raw else ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "train_config": to_jsonable(cfg),
                "config": config,
                "rng": rng,
                "data": {"seed": cfg.seed, "next_step": k,
                         "state": batch_fn.state_dict() if hasattr(batch_fn, "state_dict") else None},
                "history": {"loss": torch.tensor(losses, dtype=torch.float64),
                            "grad_norm": torch.tensor(grad_norms, dtype=torch.float64)},
                "nonfinite_streak": streak,
                "elapsed": elapsed + time.perf_counter() - t0,
                "world_size": info.world_size,
                "torch_version": str(torch.__version__),
            })
            prune_checkpoints(out, cfg.keep_last)
            last_ckpt = path
        else:
            last_ckpt = checkpoint_path(out, k)
        distributed.barrier(info)

    try:
        for step in range(start_step, cfg.steps):
            k = step + 1
            batch = _to_device(batch_fn(step, info.rank, info.world_size), device)
            generator.manual_seed(step_seed(cfg.seed, step, info.rank, _STREAM_NOISE))
            with autocast(device, cfg.amp):
                per_sample, diag = _split_loss(loss_fn(fwd, batch, generator))
            loss = per_sample.float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # on every rank, even a non-finite loss: DDP's all-reduce needs all of them
            gnorm = _grad_norm(params, cfg.grad_clip).to(device)
            ok = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
            reduced = distributed.all_reduce_sum(torch.stack([loss.detach(), (~ok).float()]), info)
            loss_sum, n_bad, gn = torch.cat([reduced, gnorm.reshape(1).float()]).tolist()
            loss_val = loss_sum / info.world_size
            lr = scheduler.get_last_lr()[0]
            if n_bad > 0:
                optimizer.zero_grad(set_to_none=True)
                streak += 1
                if info.is_main:
                    report = {"step": k, "event": "nonfinite", "loss": loss_val, "grad_norm": gn, "lr": lr,
                              "streak": streak, "ranks_affected": int(n_bad),
                              "diagnostics": _diagnose(per_sample, diag)}
                    logs.record(report)
                    log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s), step skipped "
                                "(%d in a row, stop at %d); diagnostics: %s", k, loss_val, gn, streak,
                                cfg.max_nonfinite, json.dumps(report["diagnostics"]))
            else:
                optimizer.step()
                _ema_update(ema, raw, cfg.ema_decay)
                streak = 0
            scheduler.step()
            losses.append(loss_val)
            grad_norms.append(gn)
            logs.loss(k, loss_val)

            if streak >= cfg.max_nonfinite:
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written"
                raise NonFiniteLossError(
                    f"loss or gradient non-finite for {streak} consecutive steps (steps {k - streak + 1}-{k}; last "
                    f"loss={loss_val}, grad_norm={gn}); run stopped, {where}; details in {out / 'metrics.jsonl'}",
                    step=k, checkpoint=last_ckpt)

            if k % cfg.log_every == 0 or k == cfg.steps:
                now = time.perf_counter()
                rec = {"step": k, "loss": _window_mean(losses[window_step:k]),
                       "grad_norm": _window_mean(grad_norms[window_step:k]), "lr": lr,
                       "seconds": elapsed + now - t0,
                       "samples_per_s": (k - window_step) * cfg.batch_size / max(now - window_t, 1e-9),
                       "nonfinite": sum(not math.isfinite(v) for v in losses[window_step:k])}
                logs.record(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", samples_s=f"{rec['samples_per_s']:.3g}", refresh=False)
                window_t, window_step = now, k
            if bar is not None:
                bar.update(1)

            if info.is_main and callbacks:
                state_view.step = k
                with _rng_preserved(device):
                    for cb in callbacks:
                        cb(k, state_view)
            if (cfg.ckpt_every and k % cfg.ckpt_every == 0) or k == cfg.steps:
                save(k)
    finally:
        if bar is not None:
            bar.close()
        if logs.enabled:
            logs.flush()
        logs.close()

    seconds = elapsed + time.perf_counter() - t0 if cfg.steps > start_step else elapsed
    return TrainResult(model=raw, ema_model=ema, losses=losses, steps=cfg.steps, train_seconds=seconds,
                       final_loss=losses[-1] if losses else math.nan, grad_norms=grad_norms,
                       checkpoint=last_ckpt, start_step=start_step)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled or initial >= total:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm hides itself when stderr is not a terminal
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=None)


def _restore(state: dict, path: Path, cfg: TrainConfig, info: DistInfo, raw: nn.Module, ema: nn.Module,
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
    if info.is_main:
        changes = _config_changes(state.get("train_config", {}), dataclasses.asdict(cfg))
        if changes:
            log.warning("resuming with changed training settings: %s", "; ".join(changes))
    rngs = state.get("rng") or []
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        seed_everything(step_seed(cfg.seed, step, info.rank, 3) % 2**32)
        if info.is_main:
            log.warning("%s was written by %d rank(s), this run has %d: global RNGs re-seeded, not restored",
                        path, len(rngs), info.world_size)
    data_state = (state.get("data") or {}).get("state")
    if data_state is not None and hasattr(batch_fn, "load_state_dict"):
        batch_fn.load_state_dict(data_state)
    return step, float(state.get("elapsed", 0.0)), int(state.get("nonfinite_streak", 0))
