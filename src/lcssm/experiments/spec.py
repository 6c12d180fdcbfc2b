"""The run spec: one typed, fully resolved description of a run, saved whole as the run's ``config.json``.

A :class:`RunSpec` is built when a run is created (presets in :mod:`lcssm.experiments.presets` only fill it)
and written into the run directory and every checkpoint. Loading a run reads it back with :func:`load_spec` and
never consults today's presets, so editing a preset cannot change an old run. Every field carries its help text
in its metadata; the command line (:mod:`lcssm.cli.options`) is generated from these fields.

Sections: ``data`` (what is trained on), ``objective`` (the score-matching objective and the time-conditional
loss around it), ``sde`` (the forward SDE, or ``none`` for a single noise scale), ``model`` (backbone and its
preconditioning), ``sampler`` (how samples are drawn after training and by ``lcssm sample``), ``train`` (the
trainer's :class:`~lcssm.config.TrainConfig`) and ``grids`` (sample grids written during image training).
See docs/ARCHITECTURE.md for how a run flows through them.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from lcssm.config import check_types, from_dict, meta, setting, to_jsonable
from lcssm.diffusion import CENTERS, TIME_SAMPLINGS, WEIGHTINGS
from lcssm.errors import ConfigError
from lcssm.models.precond import C_IN, C_OUT
from lcssm.objectives import OBJECTIVES
from lcssm.sampling.ode import ODE_METHODS
from lcssm.sampling.registry import SAMPLERS
from lcssm.sampling.reverse import CORRECTORS, PREDICTORS
from lcssm.sampling.schedules import SCHEDULES
from lcssm.sde import SDES
from lcssm.training.config import TrainConfig

_f = setting  # a field with its command-line metadata (lcssm.config.meta), short for the many below

__all__ = [
    "FORMAT",
    "DataSpec",
    "GridSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "RunSpec",
    "SDESpec",
    "SamplerSpec",
    "load_spec",
]

#: the ``format`` of a run spec written by this version; older config.json files have no such key
FORMAT = "lcssm-run-v2"


def _check(checks: list[tuple[bool, str, str]]) -> None:
    from lcssm.config import invalid

    for ok, key, message in checks:
        if not ok:
            raise invalid(key, message)


def _choice(value: str, valid: tuple[str, ...] | list[str], key: str) -> tuple[bool, str, str]:
    return value in valid, key, f"must be one of {', '.join(valid)}, got {value!r}"


POINTS, TOY, TRAIN, SAMPLE, FID = ("toy", "train"), ("toy",), ("train",), ("sample", "fid"), ("fid",)
RUNS = ("toy", "train")


# ---------------------------------------------------------------------------------------------------- data
DATA_KINDS = ("points", "images")
SCALES = ("none", "zero_one", "minus_one_one")


@dataclass
class DataSpec:
    """What a run trains on. ``shape`` and ``n_bins`` are filled in from the data when the run is created."""

    kind: str = _f("points", "points (a toy distribution or a point file) or images", choices=DATA_KINDS)
    source: str = _f("checkerboard", "toy distribution, .npy/.csv point file (n, d), 'digits', an image folder or "
                     "an extracted cifar-10-batches-py folder", flag="--data", commands=RUNS)
    shape: tuple[int, ...] = _f((), "shape of one example: (d,) for points, (C, R, R) for images")
    n_bins: int = _f(0, "grey levels of image data (17 for the digits, 256 for 8-bit images; 0 for points)")
    scale: str = _f("none", "range fed to the network: zero_one or minus_one_one (images), none (points)")
    random_flip: bool = _f(False, "mirror training images left-right with probability 1/2", commands=TRAIN,
                           data_kind="images")
    holdout: float = _f(0.05, "fraction of an image folder held out of training for bpd", commands=TRAIN,
                        data_kind="images")
    strict: bool = _f(False, "an unreadable image file is an error",
                      default_text="off, which skips such a file with a warning naming it", commands=TRAIN,
                      data_kind="images")
    cache_dir: str | None = _f(None, "decode an image folder once into a memory-mapped file in this folder, shared "
                               "by all ranks and later runs", commands=TRAIN, data_kind="images")

    def __post_init__(self) -> None:
        check_types(self)
        _check([
            _choice(self.kind, DATA_KINDS, "kind"), _choice(self.scale, SCALES, "scale"),
            (bool(self.source), "source", "must not be empty"),
            (all(s >= 1 for s in self.shape), "shape", f"must hold positive sizes, got {self.shape}"),
            (self.n_bins >= 0, "n_bins", f"must be >= 0, got {self.n_bins}"),
            (0 <= self.holdout < 1, "holdout", f"must lie in [0, 1), got {self.holdout}"),
        ])


# ----------------------------------------------------------------------------------------------- objective


@dataclass
class ObjectiveSpec:
    """The score-matching objective and, for runs with an SDE, the time-conditional loss around it
    (:func:`lcssm.diffusion.diffusion_loss`). Which of the options an objective takes is recorded in
    :data:`lcssm.objectives.OBJECTIVES`; the others are ignored by it."""

    name: str = _f("lcss", "score-matching objective", flag="--objective", commands=RUNS, choices=tuple(OBJECTIVES))
    sigma: float | None = _f(None, "fixed noise scale of lcss/dsm (and of the smoothed reference data) for a run "
                             "without an SDE; runs with an SDE use sigma_t", commands=TOY)
    gamma: float = _f(1.0, "LCSS gamma (paper Eq. 21)", commands=RUNS)
    antithetic: bool = _f(False, "LCSS with antithetic pairs z, -z", commands=RUNS)
    n_noise: int = _f(1, "LCSS noise draws / SSM, FD-SSM slices per example", commands=RUNS)
    fd_eps: float = _f(0.1, "FD-SSM perturbation size ||v||", commands=RUNS)
    probe: str = _f("rademacher", "SSM / SSM-VR slice distribution: rademacher or gaussian")
    center: str = _f("marginal", "center of the Stein / denoising kernel", commands=TRAIN, choices=CENTERS)
    weighting: str = _f("sigma2", "time weighting lambda(t)", commands=TRAIN, choices=WEIGHTINGS)
    t_min: float = _f(1e-5, "smallest training time", commands=TRAIN)
    time_sampling: str = _f("uniform", "training times: uniform in t (score_sde), log_level (log sigma_t/alpha_t "
                            "uniform), lognormal (EDM: ln(sigma_t/alpha_t) ~ N(p_mean, p_std^2)) or mixed (half each)",
                            commands=TRAIN, choices=TIME_SAMPLINGS)
    p_mean: float = _f(-1.2, "lognormal time sampling: mean of ln(sigma_t/alpha_t) (EDM's P_mean)")
    p_std: float = _f(1.2, "lognormal time sampling: std of ln(sigma_t/alpha_t) (EDM's P_std)")
    sigma_s: float = _f(0.05, "smoothing std of the simulated center", commands=TRAIN)
    n_sim_steps: int = _f(100, "Euler-Maruyama steps of the simulated and local centers")
    local_width: float = _f(1.0, "local center: the largest spread (data units) of the linearised last Gaussian "
                            "step (all of the noise while sigma_t is smaller)", commands=TRAIN)
    reduce_mean: bool = _f(False, "divide the per-example loss by the dimension (score_sde's reduce_mean)")

    def __post_init__(self) -> None:
        check_types(self)
        _check([
            _choice(self.name, list(OBJECTIVES), "name"), _choice(self.center, CENTERS, "center"),
            _choice(self.weighting, WEIGHTINGS, "weighting"),
            _choice(self.time_sampling, TIME_SAMPLINGS, "time_sampling"),
            (self.p_std > 0, "p_std", f"must be > 0, got {self.p_std}"),
            _choice(self.probe, ("rademacher", "gaussian"), "probe"),
            (self.sigma is None or self.sigma > 0, "sigma", f"must be > 0, got {self.sigma}"),
            (self.gamma > 0, "gamma", f"must be > 0, got {self.gamma}"),
            (self.n_noise >= 1, "n_noise", f"must be >= 1, got {self.n_noise}"),
            (self.fd_eps > 0, "fd_eps", f"must be > 0, got {self.fd_eps}"),
            (self.t_min > 0, "t_min", f"must be > 0, got {self.t_min}"),
            (self.sigma_s > 0, "sigma_s", f"must be > 0, got {self.sigma_s}"),
            (self.n_sim_steps >= 1, "n_sim_steps", f"must be >= 1, got {self.n_sim_steps}"),
            (self.local_width > 0, "local_width", f"must be > 0, got {self.local_width}"),
        ])
        if self.center == "simulated" and OBJECTIVES[self.name].needs_kernel:
            raise ConfigError("dsm needs the SDE's closed-form transition kernel, which center='simulated' does not "
                              "use; pick lcss (or ssm, ssm_vr, fdssm, exact_sm) with --center simulated")

    def options(self) -> dict[str, Any]:
        """The keyword options of this objective's function, by the names it takes (the registry's record)."""
        from lcssm.objectives import get_objective

        return {kwarg: getattr(self, name) for name, kwarg in get_objective(self.name).options.items()}


# ------------------------------------------------------------------------------------------------------ SDE
SDE_NAMES = (*SDES, "none")
#: each SDE's parameters a spec can set: its constructor's, less the horizon T (fixed at 1)
_SDE_PARAMS = {name: tuple(p for p in inspect.signature(cls).parameters if p != "T") for name, cls in SDES.items()}
_SDE_PARAMS["none"] = ()


@dataclass
class SDESpec:
    """The forward SDE with every parameter it uses (filled with the SDE's defaults when the run is created), or
    ``none``: a single noise scale (``objective.sigma``), as in density estimation (``lcssm toy``)."""

    name: str = _f("vp", "forward SDE (tanh, student: non-affine, trained at a local or simulated center)",
                   flag="--sde", commands=TRAIN, choices=SDE_NAMES[:-1])
    sigma_min: float | None = _f(None, "VE sigma_min", default_text="the SDE's", commands=TRAIN)
    sigma_max: float | None = _f(None, "VE sigma_max", default_text="the SDE's", commands=TRAIN)
    beta_min: float | None = _f(None, "VP/subVP/tanh/student beta_min", default_text="the SDE's", commands=TRAIN)
    beta_max: float | None = _f(None, "VP/subVP/tanh/student beta_max", default_text="the SDE's", commands=TRAIN)
    nu: float | None = _f(None, "student: degrees of freedom of its Student-t prior",
                          default_text="the SDE's", commands=TRAIN)
    table: dict | None = _f(None, "noise table of a non-affine SDE (times, alpha, sigma, std), measured from the "
                            "training data when the run is created (lcssm.noise_levels.tabulate)")

    def __post_init__(self) -> None:
        check_types(self)
        _check([_choice(self.name, SDE_NAMES, "name")])
        unused = [k for k in ("sigma_min", "sigma_max", "beta_min", "beta_max", "nu")
                  if getattr(self, k) is not None and k not in _SDE_PARAMS[self.name]]
        if unused:
            raise ConfigError(f"sde.{unused[0]} does not apply to the {self.name!r} SDE (it takes "
                              f"{', '.join(_SDE_PARAMS[self.name]) or 'no parameters'})")

    def resolved(self) -> SDESpec:
        """This spec with every parameter of its SDE filled in (the SDE class's defaults where None)."""
        if self.name == "none":
            return self
        sde = self.build()
        params: dict[str, Any] = {k: float(getattr(sde, k)) for k in _SDE_PARAMS[self.name]}
        return dataclasses.replace(self, **params)

    def build(self):
        """The :class:`lcssm.sde.SDE` (None for ``none``)."""
        from lcssm.sde import get_sde

        if self.name == "none":
            return None
        params = {k: getattr(self, k) for k in _SDE_PARAMS[self.name] if getattr(self, k) is not None}
        sde = get_sde(self.name, **params)
        if self.table is None or sde.has_marginal:
            return sde
        from lcssm.noise_table import NoiseTable

        return sde.with_table(NoiseTable.from_dict(self.table))


# ---------------------------------------------------------------------------------------------------- model
ARCHS = ("energy_mlp", "score_mlp", "res_mlp", "unet", "ncsnv2")


@dataclass
class ModelSpec:
    """The backbone network and its preconditioning (:class:`lcssm.models.precond.ScoreModel`).

    ``arch`` names the backbone; the MLP archs use ``hidden`` … ``embed_dim``, the image archs take every
    hyper-parameter from ``config`` (all fields of :class:`~lcssm.models.UNetConfig` or
    :class:`~lcssm.models.NCSNv2Config`, saved whole). ``c_in``: ``unit_variance`` scales the input by
    1/√(α_t² + σ_t²); ``c_out``: ``inv_sigma`` divides the output by σ_t (the network predicts −z),
    ``neg_inv_sigma`` by −σ_t (the network predicts z, DDPM++'s score −output/σ_t in score_sde), ``gaussian_skip``
    adds the score of unit-variance Gaussian data to ``output/σ_t`` (EDM's c_skip).
    """

    arch: str = _f("score_mlp", "backbone: energy_mlp (score = grad f), score_mlp, res_mlp (time-conditional "
                   "residual MLP), unet or ncsnv2", flag="--model",
                   commands=TOY, choices=ARCHS)
    hidden: int = _f(256, "hidden width of an MLP", commands=RUNS, data_kind="points")
    n_hidden: int = _f(3, "hidden layers of an MLP (residual blocks of res_mlp)")
    activation: str = _f("silu", "activation of an MLP")
    embedding: str = _f("sinusoidal", "time embedding of a time-conditional MLP: sinusoidal or fourier")
    embed_dim: int = _f(64, "time-embedding width of an MLP")
    config: dict = field(default_factory=dict, metadata=meta(
        "hyper-parameters of an image backbone (every field of its config class)", schema=lambda m: m.config_class()))
    c_in: str = _f("none", "input scaling: none, unit_variance or edm (x / sqrt(sigma_t^2 + alpha_t^2 sigma_data^2))")
    c_out: str = _f("none", "output scaling: none, inv_sigma (score = output/sigma_t), neg_inv_sigma "
                    "(score = -output/sigma_t), gaussian_skip (score = -x/(alpha_t^2 + sigma_t^2) + "
                    "output/sigma_t), stationary_skip (gaussian_skip blended with the SDE's stationary score by "
                    "1 - alpha_t^2) or edm (EDM's c_skip and c_out with sigma_data)")
    sigma_data: float | None = _f(None, "root mean square of the training data per coordinate (EDM's sigma_data), "
                                  "read by c_in / c_out / weighting edm; measured from the data when such a run is "
                                  "created")

    def __post_init__(self) -> None:
        check_types(self)
        self.config = to_jsonable(self.config)  # as saved: tuples become lists, so a loaded spec compares equal
        _check([
            _choice(self.arch, ARCHS, "arch"), _choice(self.c_in, C_IN, "c_in"), _choice(self.c_out, C_OUT, "c_out"),
            _choice(self.embedding, ("sinusoidal", "fourier"), "embedding"),
            (self.hidden >= 1 and self.n_hidden >= 1, "hidden", f"and n_hidden must be >= 1, got {self.hidden}, "
             f"{self.n_hidden}"),
            (self.embed_dim >= 2, "embed_dim", f"must be >= 2, got {self.embed_dim}"),
            (self.sigma_data is None or self.sigma_data > 0, "sigma_data", f"must be > 0, got {self.sigma_data}"),
            (self.arch in ("unet", "ncsnv2") or not self.config, "config", f"applies to unet/ncsnv2, not {self.arch}"),
        ])

    def config_class(self) -> type | None:
        """The dataclass whose fields ``config`` holds: :class:`~lcssm.models.UNetConfig` for ``unet``,
        :class:`~lcssm.models.NCSNv2Config` for ``ncsnv2``, None for the MLPs. ``--set model.config.FIELD=VALUE``
        sets one of its fields, typed and checked by it (:func:`lcssm.config.apply_values`)."""
        from lcssm.models.ncsnv2 import NCSNv2Config
        from lcssm.models.unet import UNetConfig

        return {"unet": UNetConfig, "ncsnv2": NCSNv2Config}.get(self.arch)


# -------------------------------------------------------------------------------------------------- sampler
@dataclass
class SamplerSpec:
    """How samples are drawn (:mod:`lcssm.sampling.registry`). Each sampler reads the fields it names in the registry;
    ``n_steps`` is the number of predictor steps of ``pc`` and noise levels of ``ald``."""

    name: str = _f("pc", "sampler: " + "; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()), flag="--sampler",
                   commands=(*RUNS, *SAMPLE), choices=tuple(SAMPLERS))
    n_samples: int = _f(2000, "number of samples (0 after training: none)", commands=(*RUNS, *SAMPLE))
    n_steps: int = _f(500, "pc: predictor steps; ald: noise levels", commands=(*TRAIN, *SAMPLE))
    predictor: str = _f("reverse_diffusion", "pc predictor", commands=SAMPLE, choices=PREDICTORS)
    corrector: str = _f("langevin", "pc corrector", commands=SAMPLE, choices=CORRECTORS)
    snr: float = _f(0.05, "pc Langevin corrector signal-to-noise ratio", commands=SAMPLE)
    n_corrector_steps: int = _f(1, "pc corrector steps per predictor step", commands=SAMPLE)
    t_min: float = _f(1e-3, "last time of the reverse process", commands=SAMPLE)
    denoise: bool = _f(True, "finish with one noise-free denoising step (Tweedie)", commands=SAMPLE)
    rtol: float = _f(1e-5, "ode relative tolerance", commands=SAMPLE)
    atol: float = _f(1e-5, "ode absolute tolerance", commands=SAMPLE)
    method: str = _f("RK45", "ode solver: RK45 in torch on the device (lcssm.sampling.rk45), the others "
                     "scipy.integrate.solve_ivp's", choices=ODE_METHODS)
    ald_steps_each: int = _f(5, "ald Langevin steps per noise level", commands=SAMPLE)
    ald_step_size: float | None = _f(None, "ald step size (NCSNv2 step_lr; none = 0.1 * smallest level^2)",
                                     commands=SAMPLE)
    nfe: int = _f(35, "fixed-grid samplers (euler, heun, dpmpp_2m, dpm3, edm, euler_ancestral): score evaluations "
                  "per sample (heun, edm: (nfe+1)//2 noise levels)", commands=SAMPLE)
    schedule: str = _f("karras", "fixed-grid samplers: noise levels sigma_t/alpha_t from T to t_min, then 0 (karras: "
                       "Karras et al. 2022 Eq. 5; log_sigma: log-uniform; uniform_t: the SDE's own time grid)",
                       commands=SAMPLE, choices=SCHEDULES)
    rho: float = _f(7.0, "karras schedule exponent rho", commands=SAMPLE)
    s_churn: float = _f(80.0, "edm: total churn S_churn (Karras et al. 2022 Alg. 2)", commands=SAMPLE)
    s_tmin: float = _f(0.05, "edm: churn only at noise levels >= S_tmin", commands=SAMPLE)
    s_tmax: float = _f(1.0, "edm: churn only at noise levels <= S_tmax", commands=SAMPLE)
    s_noise: float = _f(1.007, "edm: noise inflation S_noise", commands=SAMPLE)
    langevin_steps: int = _f(1000, "langevin, mala: steps", commands=(*TOY, "sample"))
    langevin_step_size: float = _f(0.003, "langevin, mala: step size eps", commands=(*TOY, "sample"))
    init: str = _f("uniform", "langevin start: uniform over the data's bounding box, or gaussian", commands=TOY,
                   choices=("uniform", "gaussian"))
    seed: int = _f(0, "sampling seed", flag="--sample-seed", commands=(*RUNS, *SAMPLE))
    batch_size: int = _f(0, "samples per sampler call (0 = one call, in chunks of 50,000 beyond)",
                         flag="--sample-batch-size",
                         commands=SAMPLE)
    after_training: bool = _f(True, "draw n_samples and evaluate them when training ends")

    def __post_init__(self) -> None:
        check_types(self)
        _check([
            _choice(self.name, list(SAMPLERS), "name"), _choice(self.predictor, PREDICTORS, "predictor"),
            _choice(self.corrector, CORRECTORS, "corrector"), _choice(self.method, ODE_METHODS, "method"),
            _choice(self.init, ("uniform", "gaussian"), "init"),
            (self.n_samples >= 0, "n_samples", f"must be >= 0, got {self.n_samples}"),
            (self.n_steps >= 1, "n_steps", f"must be >= 1, got {self.n_steps}"),
            (self.snr > 0, "snr", f"must be > 0, got {self.snr}"),
            (self.n_corrector_steps >= 0, "n_corrector_steps", f"must be >= 0, got {self.n_corrector_steps}"),
            (0 < self.t_min < 1, "t_min", f"must lie in (0, 1), got {self.t_min}"),
            (self.rtol > 0, "rtol", f"must be > 0, got {self.rtol}"),
            (self.atol > 0, "atol", f"must be > 0, got {self.atol}"),
            (self.ald_steps_each >= 1, "ald_steps_each", f"must be >= 1, got {self.ald_steps_each}"),
            (self.ald_step_size is None or self.ald_step_size > 0, "ald_step_size",
             f"must be > 0, got {self.ald_step_size}"),
            (self.nfe >= 1, "nfe", f"must be >= 1, got {self.nfe}"), _choice(self.schedule, SCHEDULES, "schedule"),
            (self.rho > 0, "rho", f"must be > 0, got {self.rho}"),
            (self.s_churn >= 0, "s_churn", f"must be >= 0, got {self.s_churn}"),
            (0 <= self.s_tmin <= self.s_tmax, "s_tmin", f"must satisfy 0 <= s_tmin <= s_tmax, got {self.s_tmin}, "
             f"{self.s_tmax}"), (self.s_noise > 0, "s_noise", f"must be > 0, got {self.s_noise}"),
            (self.langevin_steps >= 0, "langevin_steps", f"must be >= 0, got {self.langevin_steps}"),
            (self.langevin_step_size > 0, "langevin_step_size", f"must be > 0, got {self.langevin_step_size}"),
            (self.seed >= 0, "seed", f"must be >= 0, got {self.seed}"),
            (self.batch_size >= 0, "batch_size", f"must be >= 0 (0 = one batch), got {self.batch_size}"),
        ])


@dataclass
class GridSpec:
    """Sample grids written during image training (PC sampler)."""

    every: int = _f(0, "steps between sample grids in OUT/grids (0 = none)", flag="--sample-every", commands=TRAIN,
                    data_kind="images")
    n: int = _f(64, "images per sample grid", flag="--n-grid", commands=TRAIN, data_kind="images")
    steps: int = _f(100, "PC steps of the grid sampler", flag="--grid-steps", commands=TRAIN, data_kind="images")

    def __post_init__(self) -> None:
        check_types(self)
        _check([(self.every >= 0, "every", f"must be >= 0 (0 = no grids), got {self.every}"),
                (self.n >= 1, "n", f"must be >= 1, got {self.n}"), (self.steps >= 1, "steps", f"must be >= 1, got "
                                                                                    f"{self.steps}")])


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class RunSpec:
    """A whole run. ``command`` is the command that created it (``toy`` or ``train``); ``preset`` names the preset
    that filled it, for the record only: nothing is read back from it."""

    format: str = FORMAT
    command: str = "train"
    preset: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sde: SDESpec = field(default_factory=SDESpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    grids: GridSpec = field(default_factory=GridSpec)

    def __post_init__(self) -> None:
        check_types(self)
        if self.format != FORMAT:
            raise ConfigError(f"format must be {FORMAT!r}, got {self.format!r}")
        mlp = self.model.arch in ("energy_mlp", "score_mlp", "res_mlp")
        if mlp != (self.data.kind == "points"):
            fits = "energy_mlp, score_mlp or res_mlp" if self.data.kind == "points" else "unet or ncsnv2"
            raise ConfigError(f"model.arch {self.model.arch} does not take {self.data.kind} data; use {fits}")
        has_sde = self.sde.name != "none"
        if not has_sde and self.model.arch == "res_mlp":
            raise ConfigError("model.arch res_mlp is time-conditional: it needs an SDE (use energy_mlp or score_mlp)")
        if not has_sde and OBJECTIVES[self.objective.name].needs_sigma and self.objective.sigma is None:
            raise ConfigError(f"objective {self.objective.name} without an SDE needs objective.sigma (lcssm toy "
                              "--sigma, or --set objective.sigma=S)")
        if has_sde and self.objective.sigma is not None:
            raise ConfigError("objective.sigma applies to runs without an SDE; with an SDE the noise scale is sigma_t")
        if has_sde:
            sde = self.sde.build()
            if self.objective.center in ("marginal", "data") and not sde.has_marginal:
                raise ConfigError(f"SDE {self.sde.name!r} has no closed-form marginal; use --center local (or "
                                  "simulated)")
            for key, t_min in (("objective.t_min", self.objective.t_min), ("sampler.t_min", self.sampler.t_min)):
                if not t_min < sde.T:
                    raise ConfigError(f"{key} must lie in (0, {sde.T}), got {t_min}")
        if self.sampler.name == "mala" and self.model.arch != "energy_mlp":
            raise ConfigError(f"the mala sampler needs an energy model's log-density; model.arch {self.model.arch} "
                              "models the score: use --sampler langevin")
        from lcssm.sampling.registry import get_sampler

        get_sampler(self.sampler.name, self.sde.build())  # a sampler that cannot sample this run fails now

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


# ---------------------------------------------------------------------------------------------- loading
def load_spec(config: dict[str, Any], where: str = "the run") -> RunSpec:
    """The :class:`RunSpec` saved in a run's ``config.json`` / checkpoint. A config of the previous format (no
    ``format`` key) is migrated when it holds every value (point and toy runs) and refused with a message naming
    what it lacks otherwise (image runs, which saved only their preset's name)."""
    from lcssm.experiments.migrate import migrate

    if not isinstance(config, dict):
        raise ConfigError(f"the config of {where} is not a JSON object")
    if "format" not in config:
        spec = from_dict(RunSpec, {"format": FORMAT, **migrate(config, where)})
        return dataclasses.replace(spec, sde=spec.sde.resolved())
    if config["format"] != FORMAT:
        raise ConfigError(f"{where} was written in format {config['format']!r}; this lcssm reads {FORMAT!r}")
    return from_dict(RunSpec, config)
