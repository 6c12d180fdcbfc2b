"""The trainer's settings, :class:`TrainConfig`, saved with every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lcssm.config import check_types, invalid, require, setting

__all__ = ["LR_DECAYS", "OPTIMIZERS", "TrainConfig"]

OPTIMIZERS = ("adam", "adamw")
LR_DECAYS = ("none", "cosine")
_RUNS = ("toy", "train")


@dataclass
class TrainConfig:
    """Settings of the training loop (:func:`lcssm.training.loop.train`); saved with every checkpoint.

    ``batch_size`` is the global batch: each of W data-parallel ranks gets ``batch_size // W`` rows.
    ``ema_decay`` = 0 turns EMA off (the EMA model is then the model itself). ``ckpt_every`` = 0 writes only
    the final checkpoint. ``warmup`` is a linear learning-rate warmup: step k (1-based) uses
    ``lr·min(1, k/warmup)``; ``lr_decay`` ``cosine`` multiplies that by ``½(1 + cos(π(k − 1)/steps))`` (Loshchilov &
    Hutter 2017, SGDR without restarts), which falls from 1 to near 0 at the last of ``steps`` (so a run with a
    decay resumes only to its own ``steps``).
    ``grad_clip`` is a max global gradient norm (0 = off). ``amp`` enables bf16
    autocast on CUDA (ignored on CPU). ``max_nonfinite`` consecutive steps with a non-finite loss or gradient
    stop the run (:class:`lcssm.training.loop.NonFiniteLossError`, exit code 3). ``ddp_find_unused`` is passed to
    DistributedDataParallel as ``find_unused_parameters``: it must be on for energy models, whose output bias
    gets no gradient from any score-matching loss (the score is ∇ₓf).
    """

    steps: int = setting(2000, "total optimizer steps (--resume continues to this total)", commands=_RUNS)
    batch_size: int = setting(512, "global batch size (split over data-parallel ranks)", commands=_RUNS)
    lr: float = setting(1e-3, "peak learning rate", commands=_RUNS)
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "weight decay (decoupled for adamw)")
    beta1: float = setting(0.9, "Adam beta1")
    beta2: float = setting(0.999, "Adam beta2")
    adam_eps: float = setting(1e-8, "Adam epsilon")
    warmup: int = setting(0, "linear learning-rate warmup steps", commands=_RUNS)
    lr_decay: str = setting("none", "learning-rate decay over the steps (cosine: to 0 at --steps)",
                            choices=LR_DECAYS, commands=_RUNS)
    grad_clip: float = setting(0.0, "max global gradient norm (0 = off)", commands=_RUNS)
    ema_decay: float = setting(0.999, "EMA decay of the weights used for sampling and evaluation (0 = off)",
                              flag="--ema", commands=_RUNS)
    ckpt_every: int = setting(0, "steps between checkpoints (0 = by time only, and the final one)", commands=_RUNS)
    ckpt_minutes: float = setting(10.0, "minutes of training between checkpoints (0 = by steps only)",
                                 commands=_RUNS)
    keep_last: int = setting(3, "checkpoints kept", commands=_RUNS)
    log_every: int = setting(10, "steps between loss.csv / metrics.jsonl records")
    amp: bool = setting(False, "bf16 autocast on CUDA; ignored on CPU", commands=_RUNS)
    compile: bool = setting(False, "torch.compile the model", commands=_RUNS)
    max_nonfinite: int = setting(5, "consecutive non-finite steps that stop the run (exit code 3)")
    ddp_find_unused: bool = setting(True, "DDP find_unused_parameters (energy models need it)")
    seed: int = setting(0, "random seed of initialisation, data order and noise", commands=_RUNS)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", commands=_RUNS)

    def __post_init__(self) -> None:
        check_types(self)
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0, got {self.lr}")
        require(self.optimizer in OPTIMIZERS, "optimizer",
                 f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 f"must be >= 0, got {self.weight_decay}")
        for key in ("beta1", "beta2"):
            v = getattr(self, key)
            require(0 <= v < 1, key, f"must lie in [0, 1), got {v}")
        require(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        require(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        require(self.lr_decay in LR_DECAYS, "lr_decay",
                f"must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        require(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip",
                 f"must be >= 0 (0 = off), got {self.grad_clip}")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must lie in [0, 1) (0 = off), got {self.ema_decay}")
        require(self.ckpt_every >= 0, "ckpt_every", f"must be >= 0 (0 = final only), got {self.ckpt_every}")
        require(math.isfinite(self.ckpt_minutes) and self.ckpt_minutes >= 0, "ckpt_minutes",
                 f"must be >= 0 (0 = off), got {self.ckpt_minutes}")
        require(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        require(self.max_nonfinite >= 1, "max_nonfinite", f"must be >= 1, got {self.max_nonfinite}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise invalid("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
