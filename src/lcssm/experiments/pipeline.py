"""One pipeline for every run: train, open, sample and measure the likelihood, driven by the run spec.

Data kinds (:class:`PointsKind`, :class:`ImagesKind`) supply only what differs: their data and batches, the start
of a data-started sampler, the samples file, sample quality, figures and the likelihood. Everything else, the
loss, the network, the trainer, the samplers and the run directory, is the same code for toy densities, point
diffusion and image models. See docs/ARCHITECTURE.md.

A run directory holds the trainer's files (``config.json`` = the resolved :class:`RunSpec`, ``loss.csv``,
``metrics.jsonl``, ``checkpoints/``), ``metrics.json`` (:mod:`lcssm.files`: a list of records per kind, ``train``,
``sample``, ``bpd``, ``fid``), the samples file and the figures.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from lcssm.config import check_types
from lcssm.device import autocast, cpu_model, resolve_device, seed_everything
from lcssm.diffusion import Center, Weighting, diffusion_loss, sample_times
from lcssm.errors import CheckpointError, ConfigError, ResourceError, is_out_of_memory
from lcssm.experiments.images import ImagesKind
from lcssm.experiments.points import PointsKind
from lcssm.experiments.spec import RunSpec, load_spec, meta
from lcssm.files import append_metrics
from lcssm.models.precond import ScoreModel, build_score_model
from lcssm.objectives import get_objective
from lcssm.sde import SDE
from lcssm.training.loop import TrainResult, train

__all__ = ["KINDS", "LikelihoodOptions", "Run", "bpd_run", "make_loss", "open_run", "resolved_spec", "sample_run",
           "train_run", "with_noise_table"]


class DataKind(Protocol):
    """What a data kind supplies to the pipeline."""

    samples_file: str
    samples_need_data: bool  # whether sampling and evaluating samples read the training data (start, quality)

    def load(self, spec: RunSpec, split: str = "train") -> Any: ...
    def resolve(self, spec: RunSpec, data: Any) -> RunSpec: ...
    def batches(self, spec: RunSpec, data: Any) -> Any: ...
    def callbacks(self, spec: RunSpec, sde: SDE | None, out: Path) -> list: ...
    def start_fn(self, spec: RunSpec, data: Any) -> Any: ...
    def save_samples(self, spec: RunSpec, samples: Tensor, path: Path) -> dict[str, str]: ...
    def evaluate(self, spec: RunSpec, data: Any, samples: Tensor) -> dict[str, Any]: ...
    def figures(self, spec: RunSpec, data: Any, samples: Tensor, path: Path,
                model: ScoreModel | None = None) -> None: ...
    def bpd(self, run: Run, options: LikelihoodOptions) -> dict[str, Any]: ...
    def data_rms(self, spec: RunSpec, data: Any) -> float: ...
    def data_sample(self, spec: RunSpec, data: Any, n: int, generator: torch.Generator) -> Tensor: ...


KINDS: dict[str, DataKind] = {"points": PointsKind(), "images": ImagesKind()}


# -------------------------------------------------------------------------------------------------- loss
def make_loss(spec: RunSpec, sde: SDE | None):
    """``loss_fn(model, x, generator) -> per-sample loss`` for the trainer: the objective at the fixed noise scale
    ``objective.sigma`` for a run without an SDE, else the time-conditional loss
    (:func:`lcssm.diffusion.diffusion_loss`) with the run's center and weighting; divided by the dimension when
    ``objective.reduce_mean`` (score_sde's ``reduce_mean``). With an SDE it also returns ``{"t": t}``, logged with
    a non-finite step."""
    obj = spec.objective
    objective, options = get_objective(obj.name), obj.options()
    if obj.weighting == "edm" and spec.model.sigma_data is None:
        raise ConfigError("objective.weighting edm needs model.sigma_data (measured when the run is created)")
    sigma_data = 1.0 if spec.model.sigma_data is None else spec.model.sigma_data

    def fixed_sigma(model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        sigma = obj.sigma if objective.needs_sigma else None
        return objective(model, x, sigma=sigma, generator=generator, **options)

    def time_conditional(model: nn.Module, x0: Tensor, generator: torch.Generator):
        assert sde is not None  # returned only for a run with an SDE
        t = sample_times(sde, len(x0), kind=obj.time_sampling, t_min=obj.t_min, p_mean=obj.p_mean, p_std=obj.p_std,
                         generator=generator, device=x0.device, dtype=x0.dtype)
        loss = diffusion_loss(model, sde, x0, objective=obj.name, center=cast(Center, obj.center),
                              weighting=cast(Weighting, obj.weighting),
                              t_min=obj.t_min, sigma_s=obj.sigma_s, n_sim_steps=obj.n_sim_steps,
                              local_width=obj.local_width,
                              sigma_data=sigma_data, t=t, generator=generator, **options)
        if obj.reduce_mean:
            loss = loss / x0[0].numel()
        return loss, {"t": t}

    return fixed_sigma if sde is None else time_conditional


# ------------------------------------------------------------------------------------------------- train
def train_run(spec: RunSpec, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any] | None:
    """Train the run described by ``spec`` in ``out_dir``; then, when ``spec.sampler.after_training`` and
    ``n_samples`` > 0, sample and evaluate it. Returns ``{"train": record, "sample": record}`` as appended to
    ``metrics.json`` (None on non-zero ranks under torchrun)."""
    from lcssm.distributed import is_main_process
    from lcssm.files import check_run_dir
    from lcssm.plots import plot_losses

    if is_main_process():
        check_run_dir(out_dir)  # before the data are read: a foreign --out fails at once
    out = Path(out_dir)
    kind = KINDS[spec.data.kind]
    data = kind.load(spec)
    spec = _resolve(spec, data)
    sde = spec.sde.build()
    seed_everything(spec.train.seed)  # parameter initialisation
    model = build_score_model(spec.model, sde, spec.data.shape[0])
    result: TrainResult = train(model, make_loss(spec, sde), kind.batches(spec, data), spec.train, out,
                                resume=resume, overwrite=overwrite, callbacks=kind.callbacks(spec, sde, out),
                                run_config=spec.to_dict(), progress=progress, banner=_banner(spec, model, data))
    if not is_main_process():
        return None
    record = {"objective": spec.objective.name, "sde": spec.sde.name, "data": spec.data.source,
              "steps": result.steps, "train_seconds": result.train_seconds, "torch_threads": torch.get_num_threads(),
              "cpu": cpu_model(), "final_loss": result.final_loss,
              "final_loss_avg100": float(np.mean(result.losses[-100:])) if result.losses else float("nan"),
              "checkpoint": str(result.checkpoint)}
    metrics = {"train": record}
    append_metrics(out, "train", record)
    plot_losses(out / "loss.png", {spec.objective.name: result.losses},
                title=f"{spec.objective.name} on {spec.sde.name}")
    if spec.sampler.after_training and spec.sampler.n_samples > 0:
        assert isinstance(result.ema_model, ScoreModel) and result.checkpoint is not None  # built above; saved
        run = Run.of(spec, result.ema_model.eval(), int(result.steps), result.checkpoint, out,
                     resolve_device(spec.train.device))
        metrics["sample"] = _sample(run, spec, data, out / kind.samples_file, progress, trained=True)
    return metrics


def _resolve(spec: RunSpec, data: Any) -> RunSpec:
    kind = KINDS[spec.data.kind]
    spec = dataclasses.replace(kind.resolve(spec, data), sde=spec.sde.resolved())
    uses = "edm" in (spec.model.c_in, spec.model.c_out, spec.objective.weighting)
    if uses and spec.model.sigma_data is None:  # EDM's sigma_data, measured once and kept in the spec
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, sigma_data=kind.data_rms(spec, data)))
    return with_noise_table(spec, lambda generator: kind.data_sample(spec, data, 2048, generator))


def with_noise_table(spec: RunSpec, draw: Callable[[torch.Generator], Tensor]) -> RunSpec:
    """``spec`` with the noise table of its SDE (:func:`lcssm.noise_levels.tabulate`) when the SDE has no closed form
    and the spec no table yet: measured once, from the data ``draw(generator)`` returns, with a generator seeded by
    ``train.seed``, and kept in the spec. Any other spec is returned as it is, and ``draw`` is not called."""
    sde = spec.sde.build()
    if sde is None or sde.has_marginal or spec.sde.table is not None:
        return spec
    from lcssm.device import make_generator
    from lcssm.noise_levels import tabulate

    generator = make_generator(spec.train.seed)
    table = tabulate(sde, draw(generator), generator=generator)
    return dataclasses.replace(spec, sde=dataclasses.replace(spec.sde, table=table.to_dict()))


def resolved_spec(spec: RunSpec) -> RunSpec:
    """The spec as :func:`train_run` stores it in ``config.json``: filled from the data (shape, statistics) and
    with the SDE's defaults written out."""
    return _resolve(spec, KINDS[spec.data.kind].load(spec))


def _banner(spec: RunSpec, model: nn.Module, data: Any) -> str:
    from lcssm.models import count_parameters

    shape = "x".join(map(str, spec.data.shape))
    return (f"lcssm {spec.command}: {type(model.backbone).__name__} ({count_parameters(model):,} parameters) on "
            f"{spec.data.source} ({shape}{f', {len(data):,} examples' if hasattr(data, '__len__') else ''}); "
            f"sde {spec.sde.name}; objective {spec.objective.name}")


# --------------------------------------------------------------------------------------------- run dirs
@dataclass
class Run:
    """A trained run: its spec, SDE, the EMA score model (eval mode, frozen), its score function (bf16 autocast on
    CUDA when the run trained with ``amp``), the checkpoint step and file, the directory and the device."""

    spec: RunSpec
    sde: SDE | None
    model: ScoreModel
    score_fn: Any
    step: int
    checkpoint: Path
    run_dir: Path
    device: torch.device

    @property
    def kind(self) -> DataKind:
        return KINDS[self.spec.data.kind]

    @classmethod
    def of(cls, spec: RunSpec, model: ScoreModel, step: int, checkpoint: Path, run_dir: Path,
           device: torch.device) -> Run:
        model = model.to(device).eval().requires_grad_(False)
        amp = spec.train.amp

        def score_fn(x: Tensor, t: Tensor | None = None) -> Tensor:
            with autocast(device, amp):
                out = model(x) if t is None else model(x, t)
            return out.to(x.dtype)

        score_fn.log_density = model.log_density  # type: ignore[attr-defined]  # MALA's acceptance test
        return cls(spec, model.sde, model, score_fn, step, checkpoint, run_dir, device)


def open_run(run_dir: str | os.PathLike, device: str | torch.device = "auto", *, step: int | None = None) -> Run:
    """Load a run from its newest good checkpoint (falling back past corrupt ones), or from the checkpoint of
    training step ``step``, building the network from the spec saved in the checkpoint. CheckpointError when the
    directory or its checkpoints are missing or unusable (or no checkpoint has that step: the error lists those
    kept), ConfigError when its config cannot be read."""
    from lcssm.training.checkpoint import latest_good_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    found = latest_good_checkpoint(run_dir) if step is None else _checkpoint_of_step(run_dir, step)
    if found is None:
        raise CheckpointError(f"{str(run_dir)!r} holds no checkpoint (train it first, e.g. "
                              f"lcssm train --data checkerboard --out {run_dir})")
    path, state = found
    spec = load_spec(state.get("config") or {}, str(run_dir))
    model = build_score_model(spec.model, spec.sde.build(), spec.data.shape[0])
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    from lcssm.experiments.migrate import migrate_weights

    weights = migrate_weights(state.get("config") or {}, weights)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit the model built from its config: "
                              f"{' '.join(str(e).split())}") from None
    return Run.of(spec, model, int(state["step"]), path, run_dir, resolve_device(device))


def _checkpoint_of_step(run_dir: Path, step: int) -> tuple[Path, dict]:
    """``(path, state)`` of the run's checkpoint at training step ``step``, verified."""
    from lcssm.training.checkpoint import list_checkpoints, load_checkpoint

    kept = list_checkpoints(run_dir)
    paths = [p for s, p in kept if s == step]
    if not paths:
        steps = ", ".join(str(s) for s, _ in kept) or "none"
        raise CheckpointError(f"{str(run_dir)!r} has no checkpoint of step {step}; kept: {steps}")
    state = load_checkpoint(paths[0])
    if int(state.get("step", -1)) != step:
        raise CheckpointError(f"{paths[0]} holds step {state.get('step')}, not {step}")
    return paths[0], state


# ---------------------------------------------------------------------------------------------- sampling
def _sample(run: Run, spec: RunSpec, data: Any, path: Path, progress: bool, *, trained: bool = False
            ) -> dict[str, Any]:
    """Draw, save at ``path`` (with its figure beside it), evaluate and log one sample record. ``trained``: the
    samples drawn when training ended, which also get the model's figures (e.g. an energy model's density)."""
    from lcssm.sampling.registry import draw

    kind = run.kind
    samples, record = draw(run.score_fn, run.sde, spec.data.shape, spec.sampler, device=run.device,
                           progress=progress, start_fn=kind.start_fn(spec, data))
    record.update(kind.save_samples(spec, samples, path))
    record.update(kind.evaluate(spec, data, samples))
    record.update(step=run.step, checkpoint=run.checkpoint.name, device=str(run.device))
    kind.figures(spec, data, samples, path, run.model if trained else None)
    append_metrics(run.run_dir, "sample", record)
    return record


def sample_run(run_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None, *,
               out: str | os.PathLike | None = None, overwrite: bool = False, device: str | torch.device = "auto",
               progress: bool = False, step: int | None = None) -> dict[str, Any]:
    """Sample a trained run with its saved sampler spec updated by ``overrides`` (``{field: value}`` of
    :class:`~lcssm.experiments.spec.SamplerSpec`) and append the record to ``metrics.json``. The samples go to
    ``out`` (a ``.npy`` file for points, ``.npz`` for images, refused if it exists unless ``overwrite``), by default
    to a new ``RUN_DIR/samples/SAMPLER_NNN`` file, so no call replaces another's; the figure goes beside them
    (``.png``). ``step``: sample that training step's checkpoint (:func:`open_run`). Returns the record."""
    from lcssm.files import check_new_file, next_free

    run = open_run(run_dir, device, step=step)
    spec = with_sampler(run.spec, overrides or {})
    kind = run.kind
    suffix = Path(kind.samples_file).suffix
    if out is None:
        path = next_free(run.run_dir / "samples", spec.sampler.name, suffix)
    else:
        path = check_new_file(out, overwrite=overwrite)
        if path.suffix != suffix:
            raise ConfigError(f"samples of a {spec.data.kind} run are saved as {suffix}: name the file "
                              f"{path.with_suffix(suffix).name}, not {path.name}")
        check_new_file(path.with_suffix(".png"), overwrite=overwrite)
    data = kind.load(spec, "train") if kind.samples_need_data else None
    return _sample(run, spec, data, path, progress)


def with_sampler(spec: RunSpec, overrides: Mapping[str, Any]) -> RunSpec:
    """``spec`` with sampler fields set to the typed values of ``overrides`` (``{field: value}``; None keeps the
    saved value) through :func:`lcssm.config.apply_values`, the path of every override: each value checked against
    its :class:`~lcssm.experiments.spec.SamplerSpec` annotation, then the SamplerSpec and the RunSpec validated.
    ConfigError naming ``sampler.FIELD`` for a field the sampler does not have or a value it refuses."""
    from lcssm.config import apply_values, invalid

    names = {f.name for f in dataclasses.fields(spec.sampler)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise invalid(f"sampler.{unknown[0]}", f"is not a sampler option; valid: {', '.join(sorted(names))}")
    return apply_values(spec, {f"sampler.{k}": v for k, v in overrides.items() if v is not None})


# -------------------------------------------------------------------------------------------- likelihood
@dataclass
class LikelihoodOptions:
    """Options of ``lcssm bpd``: the probability-flow likelihood of held-out data."""

    data: str | None = dataclasses.field(default=None, metadata=meta(
        "toy distribution, point file or image folder to evaluate",
        default_text="the run's held-out data", commands=("bpd",)))
    n: int | None = dataclasses.field(default=None, metadata=meta(
        "number of held-out points / images",
        default_text="1000 points; the whole test split of images", commands=("bpd",)))
    trace: str = dataclasses.field(default="auto", metadata=meta(
        "divergence: auto (exact for d <= 16 points, else rademacher), exact, rademacher or gaussian",
        commands=("bpd",)))
    batch_size: int = dataclasses.field(default=500, metadata=meta("examples per ODE solve", commands=("bpd",)))
    t_min: float = dataclasses.field(default=1e-5, metadata=meta("start time of the ODE", commands=("bpd",)))
    rtol: float = dataclasses.field(default=1e-5, metadata=meta("ODE relative tolerance", commands=("bpd",)))
    atol: float = dataclasses.field(default=1e-5, metadata=meta("ODE absolute tolerance", commands=("bpd",)))
    seed: int = dataclasses.field(default=0, metadata=meta(
        "seed of the data draw, dequantization and Hutchinson noise", commands=("bpd",)))
    progress: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        checks = [(self.n is None or self.n >= 2, f"n must be >= 2, got {self.n}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.t_min > 0, f"t_min must be > 0, got {self.t_min}"),
                  (self.rtol > 0 and self.atol > 0, f"rtol and atol must be > 0, got {self.rtol}, {self.atol}"),
                  (self.seed >= 0, f"seed must be >= 0, got {self.seed}")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def bpd_run(run_dir: str | os.PathLike, options: LikelihoodOptions | None = None, *,
            device: str | torch.device = "auto", step: int | None = None) -> dict[str, Any]:
    """Negative log-likelihood of held-out data under the run's probability-flow ODE (bits/dim; for points also
    nats per point), at the newest good checkpoint or that of ``step``. Appends the record to ``metrics.json`` and
    returns it."""
    options = options or LikelihoodOptions()
    run = open_run(run_dir, device, step=step)
    if run.sde is None:
        raise ConfigError(f"{run_dir} has no SDE (a single-noise-scale {run.spec.command} run): its likelihood has "
                          "no probability-flow ODE")
    try:
        record = run.kind.bpd(run, options)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise ResourceError(f"out of memory evaluating the likelihood in batches of {options.batch_size} on "
                            f"{run.device}; use a smaller --batch-size") from None
    record.update(step=run.step, checkpoint=run.checkpoint.name)
    append_metrics(run.run_dir, "bpd", record)
    return record
