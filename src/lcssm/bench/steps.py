"""The objectives as the benchmarks and reproduction targets compare them: one name per variant, one call
signature, and a full training step (zero_grad, loss, backward, Adam step) built from it.

Variants: the six objectives of :mod:`lcssm.objectives` plus LCSS with antithetic pairs and with
``n_samples = 4``. Every variant is called through its registered :class:`~lcssm.objectives.Objective`:
``sigma`` is passed to the objectives that take a noise scale (``needs_sigma``: dsm, lcss) and to no other;
fdssm's finite-difference ``fd_eps`` and the slice counts are fixed here so that every table states the same
setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lcssm.objectives import get_objective

__all__ = ["LABELS", "VARIANTS", "make_train_step", "partial_exact_sm", "seeded", "variant_loss"]

#: variant name -> (objective, fixed keyword options of its function)
VARIANTS: dict[str, tuple[str, dict]] = {
    "exact_sm": ("exact_sm", {}),
    "ssm": ("ssm", {"n_slices": 1}),
    "ssm_vr": ("ssm_vr", {"n_slices": 1}),
    "fdssm": ("fdssm", {"fd_eps": 0.1, "n_slices": 1}),
    "dsm": ("dsm", {}),
    "lcss": ("lcss", {}),
    "lcss_antithetic": ("lcss", {"antithetic": True}),
    "lcss_n4": ("lcss", {"n_samples": 4}),
}

LABELS = {
    "exact_sm": "exact SM",
    "ssm": "SSM",
    "ssm_vr": "SSM-VR",
    "fdssm": "FD-SSM",
    "dsm": "DSM",
    "lcss": "LCSS",
    "lcss_antithetic": "LCSS antithetic",
    "lcss_n4": "LCSS n_samples=4",
}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global torch RNG for what runs inside (module initialisers draw from it) and restore its state
    afterwards, so that building a model leaves no trace on the caller's random streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def variant_loss(
    variant: str,
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    sigma: float | Tensor,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
    **overrides,
) -> Tensor:
    """Per-sample loss (B,) of a variant; ``overrides`` replace its fixed options (e.g. ``fd_eps``). ``sigma`` is
    the noise scale of the objectives that take one and is ignored by the others (exact SM, SSM, SSM-VR,
    FD-SSM evaluate the score at the data points given)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    name, options = VARIANTS[variant]
    objective = get_objective(name)
    return objective(score_fn, x, sigma=sigma if objective.needs_sigma else None, generator=generator,
                     sqrt_weight=sqrt_weight, **{**options, **overrides})


def partial_exact_sm(score_fn: Callable[[Tensor], Tensor], x: Tensor, k: int) -> Tensor:
    """Exact SM with only the first ``k`` of the d trace terms, for timing only: it has the cost structure of
    :func:`lcssm.objectives.exact_sm` (one forward pass, then one create-graph vector-Jacobian product per
    term), so its step time at two k extrapolates linearly to all d terms where running them is out of
    reach. Not an estimator of anything."""
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    flat = s.flatten(1)
    trace = x.new_zeros(x.shape[0])
    for i in range(k):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True, retain_graph=True)
        trace = trace + g.flatten(1)[:, i]
    return trace + 0.5 * flat.pow(2).sum(1)


def make_train_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], Tensor],
    *,
    lr: float = 1e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Callable[[], float]:
    """A closure doing one optimizer step of ``loss_fn(generator).mean()`` on ``model`` with Adam.

    The noise generator advances from step to step (as in training). Returns the loss value of the step; the
    value is read with ``.item()`` after the optimizer step, as a trainer that logs the loss would.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(gen).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step
