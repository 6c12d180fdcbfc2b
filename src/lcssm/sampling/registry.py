"""The sampler registry: every sampler of a run by name, with one calling convention and one place for its NFE.

A registered sampler is ``run(score_fn, sde, x, spec, generator, progress) -> (samples, nfe)``: ``x`` is the
starting tensor (drawn by :func:`start`), ``spec`` a :class:`lcssm.experiments.spec.SamplerSpec`, ``nfe`` the
number of score evaluations each sample went through. ``fields`` lists the spec fields the sampler reads (they are
recorded with its samples). The algorithms themselves live in the modules of :mod:`lcssm.sampling`; adding a
sampler means one adapter here, registered by name with :func:`register_sampler` above its definition (plus a spec
field for each new option).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lcssm.errors import ConfigError, ResourceError, is_out_of_memory
from lcssm.noise_levels import noise_level, time_of
from lcssm.sampling.langevin import annealed_langevin, geometric_sigmas, langevin, mala, noise_conditional_score
from lcssm.sampling.ode import heun_pf_sample, ode_sample
from lcssm.sampling.reverse import pc_sample
from lcssm.sampling.schedules import noise_schedule
from lcssm.sampling.solvers import SOLVERS, sample
from lcssm.sde import SDE

__all__ = ["SAMPLERS", "Sampler", "draw", "get_sampler", "start"]

SamplerFn = Callable[..., tuple]  # (samples, nfe) or (samples, nfe, {statistic: value})

#: the largest batch of one sampler call when the spec sets none (batch_size 0): larger n are drawn in chunks
MAX_BATCH = 50_000


@dataclass(frozen=True)
class Sampler:
    """A registered sampler. ``start``: ``prior`` (the SDE's prior at T), ``noise_level`` (N(0, ς_T²I), the largest
    noise level of annealed Langevin) or ``data`` (the caller's start, e.g. uniform over the data's bounding box).
    ``needs_sde``: it samples a diffusion model (else a single-noise-scale score ``s(x)``); ``needs_marginal``: it
    needs the SDE's closed-form marginal. ``fields``: the :class:`~lcssm.experiments.spec.SamplerSpec` fields it
    reads (recorded with its samples)."""

    name: str
    run: SamplerFn
    start: str
    needs_sde: bool
    needs_marginal: bool
    fields: tuple[str, ...]
    help: str


#: every sampler by name, in the order they are offered; filled by :func:`register_sampler` beside each adapter
SAMPLERS: dict[str, Sampler] = {}


def register_sampler(*, name: str, start: str, fields: tuple[str, ...], help: str, needs_sde: bool = True,
                     needs_marginal: bool = False) -> Callable[[SamplerFn], SamplerFn]:
    """Register the decorated adapter ``run(score_fn, sde, x, spec, generator, progress)`` as sampler ``name``."""
    if start not in ("prior", "noise_level", "data"):
        raise ValueError(f"sampler {name!r}: start must be prior, noise_level or data, got {start!r}")

    def register(run: SamplerFn) -> SamplerFn:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is registered twice")
        SAMPLERS[name] = Sampler(name=name, run=run, start=start, needs_sde=needs_sde, needs_marginal=needs_marginal,
                                 fields=fields, help=help)
        return run

    return register


_PC_FIELDS = ("n_steps", "predictor", "corrector", "snr", "n_corrector_steps", "t_min", "denoise")


@register_sampler(name="pc", start="prior", fields=_PC_FIELDS, help="predictor-corrector sampler of the reverse SDE")
def _pc(score_fn, sde: SDE, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
    corrector_steps = spec.n_corrector_steps if spec.corrector != "none" else 0
    out = pc_sample(score_fn, sde, x, n_steps=spec.n_steps, predictor=spec.predictor, corrector=spec.corrector,
                    snr=spec.snr, n_corrector_steps=corrector_steps, denoise=spec.denoise, t_min=spec.t_min,
                    generator=generator, progress=progress)
    per_step = int(spec.predictor != "none") + corrector_steps
    return out, spec.n_steps * per_step + int(spec.denoise)


@register_sampler(name="ode", start="prior", fields=("rtol", "atol", "method", "t_min", "denoise"),
                  help="probability-flow ODE, adaptive Runge-Kutta")
def _ode(score_fn, sde: SDE, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
    out, nfe = ode_sample(score_fn, sde, x, rtol=spec.rtol, atol=spec.atol, method=spec.method,
                          denoise=spec.denoise, t_min=spec.t_min, progress=progress)
    return out, nfe + int(spec.denoise)


@register_sampler(name="pf_heun", start="prior", fields=("nfe", "schedule", "rho", "t_min", "denoise"),
                  help="Heun on the probability-flow ODE in t, any SDE (nfe = 2n-1)")
def _pf_heun(score_fn, sde: SDE, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
    levels = noise_schedule(sde, max(2, (spec.nfe + 1) // 2), spec.schedule, t_min=spec.t_min, rho=spec.rho)[:-1]
    times = time_of(sde, levels)
    times[0], times[-1] = sde.T, spec.t_min
    out, nfe = heun_pf_sample(score_fn, sde, x, times.to(x.dtype), denoise=spec.denoise, progress=progress)
    return out, nfe + int(spec.denoise)


def _levels(sde: SDE, spec) -> tuple[float, float]:
    """ς_T and ς_{t_min} (ς = σ_t/α_t), the largest and smallest noise level of annealed Langevin."""
    return tuple(noise_level(sde, torch.tensor([sde.T, spec.t_min], dtype=torch.float64)).tolist())


@register_sampler(name="ald", start="noise_level", needs_marginal=True,
                  fields=("n_steps", "ald_steps_each", "ald_step_size", "t_min", "denoise"),
                  help="annealed Langevin dynamics over geometric noise levels sigma_t/alpha_t")
def _ald(score_fn, sde: SDE, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
    high, low = _levels(sde, spec)
    step = spec.ald_step_size if spec.ald_step_size is not None else 0.1 * low**2
    out = annealed_langevin(noise_conditional_score(score_fn, sde), x, geometric_sigmas(high, low, spec.n_steps),
                            step_size=step, n_steps_each=spec.ald_steps_each, denoise=spec.denoise,
                            generator=generator, progress=progress)
    return out, spec.n_steps * spec.ald_steps_each + int(spec.denoise)


_LANGEVIN_FIELDS = ("langevin_steps", "langevin_step_size", "init")


@register_sampler(name="langevin", start="data", needs_sde=False, fields=_LANGEVIN_FIELDS,
                  help="unadjusted Langevin dynamics of a single-noise-scale score (paper Eq. 31)")
def _langevin(score_fn, sde: SDE | None, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
    out = langevin(score_fn, x, step_size=spec.langevin_step_size, n_steps=spec.langevin_steps, generator=generator,
                   progress=progress)
    return out, spec.langevin_steps


@register_sampler(name="mala", start="data", needs_sde=False, fields=_LANGEVIN_FIELDS,
                  help="Metropolis-adjusted Langevin of an energy model (exact for exp f at any step size)")
def _mala(score_fn, sde: SDE | None, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int, dict]:
    log_density = getattr(score_fn, "log_density", None)
    if log_density is None:
        raise ConfigError("the mala sampler needs the model's log-density (an energy model); use langevin")
    out, rate = mala(log_density, x, step_size=spec.langevin_step_size, n_steps=spec.langevin_steps,
                     generator=generator, progress=progress)
    return out, spec.langevin_steps + 1, {"acceptance_rate": rate}  # evaluations of f and its gradient


def _register_fixed_grid(name: str) -> None:
    """Register the fixed-grid solver ``name`` (:data:`lcssm.sampling.solvers.SOLVERS`) as a sampler: nfe, schedule,
    rho, t_min (and the churn parameters of edm) from the spec; the NFE is the count of score evaluations the solver
    made."""
    churn = SOLVERS[name].options

    def run(score_fn, sde: SDE, x: Tensor, spec, generator, progress: bool) -> tuple[Tensor, int]:
        return sample(score_fn, sde, x, sampler=name, nfe=spec.nfe, schedule=spec.schedule, t_min=spec.t_min,
                      rho=spec.rho, generator=generator, progress=progress, **{k: getattr(spec, k) for k in churn})

    register_sampler(name=name, start="prior", needs_marginal=True, fields=("nfe", "schedule", "rho", "t_min", *churn),
                     help=SOLVERS[name].help)(run)


for _name in SOLVERS:
    _register_fixed_grid(_name)


def get_sampler(name: str, sde: SDE | None) -> Sampler:
    """The sampler called ``name``, checked against the run's SDE; ConfigError naming the valid choices."""
    try:
        sampler = SAMPLERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}") from None
    usable = [s.name for s in SAMPLERS.values() if s.needs_sde == (sde is not None)
              and (not s.needs_marginal or (sde is not None and sde.has_marginal))]
    if name not in usable:
        what = "a run without an SDE" if sde is None else f"a run with {sde!r}"
        why = " (it needs an SDE with a closed-form Gaussian marginal)" if sampler.needs_marginal and sde else ""
        raise ConfigError(f"the {name} sampler does not apply to {what}{why}; use {' or '.join(usable)}")
    return sampler


def start(sampler: Sampler, sde: SDE | None, shape: tuple[int, ...], generator: torch.Generator,
          device: torch.device) -> Tensor:
    """The starting tensor of a sampler that starts from noise (``prior`` or ``noise_level``)."""
    if sampler.start not in ("prior", "noise_level"):
        raise ConfigError(f"the {sampler.name} sampler starts from data: pass its start")
    if sde is None:
        raise ConfigError(f"the {sampler.name} sampler starts from the noise of an SDE: pass the run's SDE")
    if sampler.start == "prior":
        return sde.prior_sample(shape, generator=generator, device=device)
    return sde_level(sde) * torch.randn(shape, generator=generator, device=device)


def sde_level(sde: SDE) -> float:
    """ς_T = σ_T/α_T, the noise level of the SDE at its end time."""
    return float(noise_level(sde, torch.tensor([sde.T], dtype=torch.float64)))


def _available_bytes() -> int | None:
    """Memory this process may still allocate: the smaller of the free physical memory and what the
    address-space limit (``ulimit -v``) leaves beside the process's current size; None where neither is known."""
    import os
    import resource

    limits = []
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        limits.append(os.sysconf("SC_AVPHYS_PAGES") * page)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * page
            limits.append(max(soft - used, 0))
    except (ValueError, OSError, AttributeError):
        pass
    return min(limits) if limits else None


def _check_room(n: int, shape: tuple[int, ...]) -> None:
    """ResourceError before any work when the float32 result of ``n`` samples cannot fit in memory (twice: the
    batches and their concatenation exist together for a moment)."""
    need = 2 * 4 * n * math.prod(shape)
    room = _available_bytes()
    if room is not None and need > room:
        raise ResourceError(f"{n:,} samples of shape {tuple(shape)} need {need / 2**30:.1f} GiB to be collected, "
                            f"more than the {room / 2**30:.1f} GiB available; draw fewer --n-samples "
                            "(several calls with other --sample-seed values)")


def draw(score_fn, sde: SDE | None, shape: tuple[int, ...], spec, *, device: torch.device, progress: bool = False,
         start_fn: Callable[[int, torch.Generator], Tensor] | None = None) -> tuple[Tensor, dict[str, Any]]:
    """``spec.n_samples`` samples of one example ``shape`` with ``spec``'s sampler, in batches of
    ``spec.batch_size`` (0 = one batch, or batches of :data:`MAX_BATCH` beyond that) that share one generator seeded
    with ``spec.seed`` (so samples depend on the batch size). ``start_fn(n, generator)`` gives the start of a
    ``data`` sampler, drawn from a CPU generator seeded with ``spec.seed`` (the sampler's noise then comes from
    ``spec.seed + 1`` on the device). Returns (float32 samples on the CPU, record: sampler, the fields it read, n,
    nfe (mean over batches), nfe_per_batch, seconds, non_finite). ResourceError before any work when the result
    cannot fit in memory, or when memory runs out on the way."""
    from lcssm.device import make_generator

    sampler = get_sampler(spec.name, sde)
    n, size = spec.n_samples, spec.batch_size or min(spec.n_samples, MAX_BATCH)
    _check_room(n, shape)
    if n < 1:
        raise ConfigError(f"sampler.n_samples (--n-samples) must be >= 1, got {n}")
    generator = make_generator(spec.seed, device)
    from_data = sampler.start == "data"
    if from_data:  # the start is drawn from data on the CPU, the sampler's noise on the device
        start_generator, generator = make_generator(spec.seed), make_generator(spec.seed + 1, device)
    chunks, nfes, extras = [], [], []
    began = time.perf_counter()
    try:
        for i in range(0, n, size):
            b = min(size, n - i)
            if from_data and start_fn is not None:  # (no start_fn: start() says the sampler needs one)
                x = start_fn(b, start_generator).to(device)
            else:
                x = start(sampler, sde, (b, *shape), generator, device)
            out, nfe, *info = sampler.run(score_fn, sde, x, spec, generator, progress)
            chunks.append(out.float().cpu())
            nfes.append(int(nfe))
            extras.append(info[0] if info else {})
        samples = torch.cat(chunks)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise ResourceError(f"out of memory sampling {n} samples in batches of {size} on {device}; use a smaller "
                            "--sample-batch-size (or fewer --n-samples)") from None
    record = {"sampler": sampler.name, **{k: getattr(spec, k) for k in sampler.fields}, "n": n,
              "batch_size": spec.batch_size, "seed": spec.seed, "nfe": sum(nfes) / len(nfes), "nfe_per_batch": nfes,
              "seconds": time.perf_counter() - began,
              "non_finite": int((~torch.isfinite(samples).flatten(1).all(1)).sum())}
    for key in extras[0]:  # a sampler's own statistics (MALA's acceptance rate), averaged over the batches
        record[key] = sum(e[key] * len(c) for e, c in zip(extras, chunks)) / n
    return samples, record
