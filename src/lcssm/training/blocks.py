"""The building blocks of a step of :func:`lcssm.training.loop.train`: the optimizer with its linear warmup, the EMA of
the weights, the global gradient norm (and clipping), moving a batch to the device and reading what the loss
function returned."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lcssm.errors import ConfigError
from lcssm.training.config import TrainConfig

__all__ = ["ema_update", "grad_norm", "lr_factor", "make_ema", "make_optimizer", "split_loss", "to_device"]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (``cfg.optimizer``) over the trainable parameters; ConfigError when there are none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning rate's multiplier at the i-th step (0-based): the linear warmup ``min(1, (i+1)/warmup)``, times
    ``½(1 + cos(π i/steps))`` for ``lr_decay="cosine"`` (Loshchilov & Hutter 2017, without restarts)."""
    warmup, steps, cosine = cfg.warmup, cfg.steps, cfg.lr_decay == "cosine"

    def factor(i: int) -> float:
        rise = 1.0 if warmup <= 0 else min(1.0, (i + 1) / warmup)
        return rise * (0.5 * (1.0 + math.cos(math.pi * min(i, steps) / steps)) if cosine else 1.0)

    return factor


def make_ema(model: nn.Module, decay: float) -> nn.Module:
    """A frozen copy of ``model`` in eval mode to hold the EMA; ``model`` itself when ``decay`` is 0."""
    if decay == 0:
        return model
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``θ_ema ← decay·θ_ema + (1 − decay)·θ`` for parameters; buffers (e.g. norm statistics) are copied."""
    if ema is model:
        return
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def grad_norm(params: list[nn.Parameter], clip: float) -> Tensor:
    """Global L2 norm of the gradients (clipping them to ``clip`` when > 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def to_device(x: Any, device: torch.device) -> Any:
    """Move the tensors in ``x`` (a tensor, or lists, tuples and dicts of them) to ``device``."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def split_loss(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``(per-sample loss, diagnostics)`` from what ``loss_fn`` returned; TypeError for anything else."""
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], dict):
            raise TypeError("loss_fn must return a per-sample loss tensor or (loss, diagnostics dict)")
        loss, diag = out
    else:
        loss, diag = out, {}
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    return loss, diag
