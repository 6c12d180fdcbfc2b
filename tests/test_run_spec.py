"""The run spec as the one description of a run: a run keeps the values it was created with however the presets
change, runs of the previous format still open (or are refused naming what they lack), every objective honours
the registry's one calling contract, and every command-line flag is one spec field and back."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch

from lcssm.cli import build_parser, main
from lcssm.cli.options import CommandOptions, bindings
from lcssm.config import apply_overrides, is_dataclass_type, type_hints
from lcssm.errors import ConfigError
from lcssm.experiments import pipeline
from lcssm.experiments.pipeline import LikelihoodOptions, open_run, sample_run, train_run
from lcssm.experiments.presets import ImagePreset, ToyPreset, image_spec, point_spec, toy_spec
from lcssm.experiments.spec import ObjectiveSpec, RunSpec, SamplerSpec
from lcssm.models import presets as model_presets
from lcssm.objectives import OBJECTIVES
from lcssm.sde import VPSDE, SubVPSDE
from lcssm.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint

# ------------------------------------------------------------------------------------------------- helpers


def _tiny_image_spec() -> RunSpec:
    return apply_overrides(image_spec(ImagePreset(preset="tiny")),
                           ["train.steps=2", "train.batch_size=8", "train.ema_decay=0.5", "grids.every=0"])


def _config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def _score_inputs(dim: int, shape: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, *(shape or (dim,)), generator=g)
    t = 0.05 + 0.9 * torch.rand(5, generator=g)
    return x, t


# --------------------------------------------------------------- (a) a run keeps its values when presets change
def _changed_tiny() -> model_presets.ModelPreset:
    """The tiny preset with another SDE, network, data scale, loss and sampler settings."""
    tiny = model_presets.MODEL_PRESETS["tiny"]
    training = {**tiny.training, "sde": "subvp", "beta_min": 0.2, "beta_max": 10.0, "data_scale": "zero_one",
                "weighting": "g2", "reduce_mean": True, "num_scales": 7, "n_iters": 3}
    sampling = {**tiny.sampling, "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.11,
                "n_steps_each": 2, "denoise": False}
    return dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, nf=16, input_centered=False),
                               training=MappingProxyType(training), sampling=MappingProxyType(sampling))


def test_a_run_keeps_its_saved_values_when_the_preset_changes(tmp_path, monkeypatch):
    old_dir = tmp_path / "old"
    train_run(_tiny_image_spec(), old_dir, progress=False)
    saved = _config(old_dir)
    assert saved["sde"]["name"] == "vp" and saved["model"]["config"]["nf"] == 8

    monkeypatch.setitem(model_presets.MODEL_PRESETS, "tiny", _changed_tiny())
    assert model_presets.get_preset("tiny").model.nf == 16  # get_preset reads MODEL_PRESETS: the change is seen

    run = open_run(old_dir, device="cpu")
    assert run.spec.to_dict() == saved  # every section as saved in config.json, none from today's preset
    assert isinstance(run.sde, VPSDE) and not isinstance(run.sde, SubVPSDE)
    assert (run.sde.beta_min, run.sde.beta_max) == (saved["sde"]["beta_min"], saved["sde"]["beta_max"]) == (0.1, 20)
    assert run.model.backbone.config.nf == 8 and run.model.backbone.config.input_centered
    assert run.spec.data.scale == "minus_one_one" and run.spec.objective.weighting == "edm"  # tiny: --precond edm
    assert not run.spec.objective.reduce_mean
    assert dataclasses.asdict(run.spec.sampler) == saved["sampler"]
    assert (run.spec.sampler.predictor, run.spec.sampler.corrector, run.spec.sampler.n_steps) == (
        "euler_maruyama", "none", 1000)

    record = sample_run(old_dir, {"n_samples": 2, "n_steps": 2}, device="cpu")
    assert record["predictor"] == "euler_maruyama" and record["corrector"] == "none" and record["denoise"] is True
    assert record["nfe"] == 2 + 1 and record["non_finite"] == 0
    with np.load(record["file"]) as f:  # written in the saved scale [-1, 1]
        assert f["samples"].shape == (2, 1, 8, 8)

    # a run created now gets the changed preset
    new = image_spec(ImagePreset(preset="tiny", precond="score_sde"))  # as published: the preset's own weighting
    assert new.sde.name == "subvp" and (new.sde.beta_min, new.sde.beta_max) == (0.2, 10.0)
    assert new.model.config["nf"] == 16 and new.data.scale == "zero_one" and new.objective.weighting == "g2"
    assert new.objective.reduce_mean and new.train.steps == 3
    assert (new.sampler.predictor, new.sampler.corrector, new.sampler.snr, new.sampler.n_corrector_steps,
            new.sampler.n_steps, new.sampler.denoise) == ("reverse_diffusion", "langevin", 0.11, 2, 7, False)
    new_dir = tmp_path / "new"
    train_run(apply_overrides(new, ["train.steps=1", "train.batch_size=4", "grids.every=0"]), new_dir,
              progress=False)
    fresh = open_run(new_dir, device="cpu")
    assert isinstance(fresh.sde, SubVPSDE) and fresh.model.backbone.config.nf == 16
    assert fresh.spec.to_dict() == _config(new_dir) and fresh.spec.data.scale == "zero_one"


def test_a_new_point_run_saves_the_parameters_of_its_sde(tmp_path):
    """SDESpec: "every parameter it uses (filled with the SDE's defaults when the run is created)", so a run does
    not change when an SDE class's defaults do (image specs are resolved in image_spec)."""
    spec = apply_overrides(point_spec(), ["model.hidden=8", "model.n_hidden=1", "train.steps=1",
                                          "train.batch_size=8", "sampler.n_samples=0"])
    assert spec.sde.beta_min is None
    train_run(spec, tmp_path / "run", progress=False)
    saved = _config(tmp_path / "run")["sde"]
    assert (saved["beta_min"], saved["beta_max"]) == (0.1, 20.0), saved


@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "tanh"])
def test_every_sde_parameter_is_a_spec_field_and_resolves(name):
    """The spec's SDE parameters are read from each SDE's constructor: each must be a field of SDESpec, settable,
    and kept by resolved() (a constructor parameter without a field would fail here, not in a user's run)."""
    from lcssm.experiments.spec import SDESpec
    from lcssm.sde import SDES

    params = [p for p in inspect.signature(SDES[name]).parameters if p != "T"]
    assert params and set(params) <= {f.name for f in dataclasses.fields(SDESpec)}
    values = {p: v for p, v in zip(params, (0.05, 30.0))}
    resolved = SDESpec(name, **values).resolved()
    assert {p: getattr(resolved, p) for p in params} == values
    assert {p: getattr(resolved.build(), p) for p in params} == values
    other = ({"sigma_min", "sigma_max", "beta_min", "beta_max"} - set(params)).pop()
    with pytest.raises(ConfigError, match=f"does not apply to the '{name}' SDE"):
        SDESpec(name, **{other: 1.0})


# ------------------------------------------------------------------------------ (b) runs of the previous format
def _old_point_config(spec: RunSpec) -> dict:
    """A DiffusionConfig-era config.json (``kind: points``) holding the values of ``spec``."""
    o, s, m, sp = spec.objective, spec.sde, spec.model, spec.sampler
    return {
        "kind": "points", "data": spec.data.source, "dim": spec.data.shape[0], "sde": s.name,
        "sigma_min": s.sigma_min, "sigma_max": s.sigma_max, "beta_min": s.beta_min, "beta_max": s.beta_max,
        "objective": o.name, "center": o.center, "weighting": o.weighting, "t_eps": o.t_min, "sigma_s": o.sigma_s,
        "n_sim_steps": o.n_sim_steps, "gamma": o.gamma, "antithetic": o.antithetic, "n_noise": o.n_noise,
        "fd_eps": o.fd_eps, "hidden": m.hidden, "n_hidden": m.n_hidden, "activation": m.activation,
        "embedding": m.embedding, "embed_dim": m.embed_dim,
        "sample": {"sampler": sp.name, "n": sp.n_samples, "n_steps": sp.n_steps, "predictor": sp.predictor,
                   "corrector": sp.corrector, "snr": sp.snr, "n_corrector_steps": sp.n_corrector_steps,
                   "eps": sp.t_min, "denoise": sp.denoise, "rtol": sp.rtol, "atol": sp.atol, "method": sp.method,
                   "ald_steps_each": sp.ald_steps_each, "ald_step_size": sp.ald_step_size, "seed": sp.seed,
                   "batch_size": sp.batch_size},
        "train": dataclasses.asdict(spec.train),
    }


def _old_toy_config(spec: RunSpec) -> dict:
    """A ToyConfig-era config.json (``command: toy``) holding the values of ``spec``."""
    o, sp = spec.objective, spec.sampler
    return {
        "command": "toy", "data": spec.data.source, "objective": o.name,
        "model": {"energy_mlp": "energy", "score_mlp": "score"}[spec.model.arch], "sigma": o.sigma,
        "gamma": o.gamma, "antithetic": o.antithetic, "n_noise": o.n_noise, "fd_eps": o.fd_eps,
        "hidden": spec.model.hidden, "activation": spec.model.activation, "n_samples": sp.n_samples,
        "langevin_steps": sp.langevin_steps, "langevin_step_size": sp.langevin_step_size, "init": sp.init,
        "train": dataclasses.asdict(spec.train),
    }


def _old_image_config(spec: RunSpec) -> dict:
    """An ImageRunConfig-era config.json: the preset's name and overrides only."""
    return {"command": "train", "kind": "image", "preset": spec.preset, "objective": "lcss", "center": "marginal",
            "weighting": None, "gamma": 1.0, "antithetic": False, "n_noise": 1, "data_dir": None,
            "resolution": None, "channels": None, "nf": None, "random_flip": None, "holdout": 0.05,
            "strict": False, "cache_dir": None, "sample_every": 0, "n_grid": 64, "grid_steps": 100,
            "train": dataclasses.asdict(spec.train)}


def _rewrite(new_dir: Path, old_dir: Path, config: dict, rename) -> None:
    """Copy the newest checkpoint of ``new_dir`` into ``old_dir`` as the previous format wrote it: ``config``
    in place of the run spec, the weights under their old names (``rename(key)``)."""
    (step, path), = list_checkpoints(new_dir)[-1:]
    state = load_checkpoint(path)
    state["config"] = config
    for key in ("model", "ema"):
        if state.get(key) is not None:
            state[key] = {rename(k): v for k, v in state[key].items()}
    save_checkpoint(checkpoint_path(old_dir, step), state)
    (old_dir / "config.json").write_text(json.dumps(config, indent=2))


def test_an_old_format_point_run_opens_and_samples_like_its_new_format_twin(tmp_path):
    # the old format knew only the score MLP (output / sigma_t), PC sampling and times uniform in t
    spec = apply_overrides(point_spec(), ["model.arch=score_mlp", "model.c_out=inv_sigma", "model.hidden=16",
                                          "model.n_hidden=2",
                                          "sampler.name=pc", "sampler.nfe=35", "objective.time_sampling=uniform",
                                          "train.steps=2", "train.batch_size=32", "sampler.n_samples=0"])
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    train_run(spec, new_dir, progress=False)
    new_spec = open_run(new_dir, device="cpu").spec
    assert all(k.startswith("backbone.") for k in load_checkpoint(list_checkpoints(new_dir)[-1][1])["ema"])
    _rewrite(new_dir, old_dir, _old_point_config(new_spec), lambda k: "net." + k.removeprefix("backbone."))
    assert "format" not in _config(old_dir)

    old, new = open_run(old_dir, device="cpu"), open_run(new_dir, device="cpu")
    # every value migrated; the SDE parameters the old run left at None are filled with the SDE's defaults
    assert (old.spec.sde.beta_min, old.spec.sde.beta_max) == (0.1, 20.0)
    assert old.spec == dataclasses.replace(new.spec, sde=new.spec.sde.resolved())
    assert (old.model.c_in, old.model.c_out) == ("unit_variance", "inv_sigma")
    x, t = _score_inputs(2)
    with torch.no_grad():
        assert torch.equal(old.score_fn(x, t), new.score_fn(x, t))
    options = {"n_samples": 16, "n_steps": 4}
    a, b = sample_run(old_dir, options, device="cpu"), sample_run(new_dir, options, device="cpu")
    assert a["nfe"] == b["nfe"] == 4 * 2 + 1 and a["energy_distance"] == b["energy_distance"]
    np.testing.assert_array_equal(np.load(a["file"]), np.load(b["file"]))


def test_an_old_format_toy_run_opens_and_samples_like_its_new_format_twin(tmp_path):
    # the old format sampled by unadjusted Langevin only
    spec = apply_overrides(toy_spec("quick"), ["model.hidden=16", "train.steps=2", "train.batch_size=32",
                                               "sampler.n_samples=0", "sampler.name=langevin"])
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    train_run(spec, new_dir, progress=False)
    new_spec = open_run(new_dir, device="cpu").spec
    _rewrite(new_dir, old_dir, _old_toy_config(new_spec), lambda k: k.removeprefix("backbone."))

    old, new = open_run(old_dir, device="cpu"), open_run(new_dir, device="cpu")
    assert old.spec.preset is None and new.spec.preset == "quick"  # the old config did not name its preset
    assert dataclasses.replace(old.spec, preset="quick") == new.spec
    assert old.sde is None and old.spec.model.arch == "energy_mlp"
    x, _ = _score_inputs(2)
    assert torch.equal(old.score_fn(x), new.score_fn(x))
    options = {"n_samples": 16, "langevin_steps": 3}
    a, b = sample_run(old_dir, options, device="cpu"), sample_run(new_dir, options, device="cpu")
    assert a["nfe"] == b["nfe"] == 3
    np.testing.assert_array_equal(np.load(a["file"]), np.load(b["file"]))


def test_an_old_format_image_run_is_refused_naming_what_it_lacks(tmp_path, capsys):
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    spec = apply_overrides(_tiny_image_spec(), ["train.steps=1", "train.batch_size=4"])
    train_run(spec, new_dir, progress=False)
    _rewrite(new_dir, old_dir, _old_image_config(spec), lambda k: k.removeprefix("backbone."))
    with pytest.raises(ConfigError, match="image run of the previous format") as err:
        open_run(old_dir, device="cpu")
    for missing in ("network architecture", "SDE", "data scale", "sampler settings", "'tiny'"):
        assert missing in str(err.value), missing
    with pytest.raises(ConfigError, match="network architecture"):
        sample_run(old_dir, {"n_samples": 2})
    capsys.readouterr()
    assert main(["sample", str(old_dir), "--n-samples", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lcssm sample: error:") and "network architecture" in err
    assert not (old_dir / "samples").exists()


# ------------------------------------------------------------------------- (c) the objectives' one contract
# a non-default, valid value of every ObjectiveSpec field an objective may take
OPTION_VALUES = {"gamma": 1.5, "antithetic": True, "n_noise": 2, "fd_eps": 0.05, "probe": "gaussian"}
DRAWS_NOISE = {"ssm", "ssm_vr", "fdssm", "dsm", "lcss"}  # exact_sm draws none (its generator is unused)


def _mlp_score():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(3, 8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, 3, generator=g, dtype=torch.float64) / 3
    return lambda x: torch.tanh(x @ w1) @ w2 - 0.5 * x  # rows independent, smooth: every objective applies


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_honours_the_one_calling_contract(name):
    obj = OBJECTIVES[name]
    assert obj.name == name and set(OPTION_VALUES) >= set(obj.options), "a new option needs a value here"
    score = _mlp_score()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0], dtype=torch.float64)
    options = {kw: OPTION_VALUES[field] for field, kw in obj.options.items()}
    sigma = {"sigma": 0.3} if obj.needs_sigma else {}

    def call(seed: int, sqrt_weight=None, **extra):
        return obj(score, x, generator=torch.Generator().manual_seed(seed), sqrt_weight=sqrt_weight,
                   **sigma, **options, **extra)

    out = call(2, w)
    assert out.shape == (5,) and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert torch.equal(out, call(2, w))  # the same seed: the same noise, bit for bit
    if name in DRAWS_NOISE:
        assert not torch.equal(out, call(3, w))
    else:
        assert torch.equal(out, call(3, w))
    # sqrt_weight is sqrt(lambda): the loss is lambda times the unweighted one. This holds exactly (up to rounding)
    # for every objective, also lcss and dsm, whose weighted forms fold r = sqrt(lambda) into r/sigma: lcss is
    # gamma*r*(r/sigma)*s.z + r^2/2*|s|^2 = r^2*(gamma/sigma*s.z + |s|^2/2), dsm 1/2|r*s + (r/sigma)z|^2 =
    # r^2 * 1/2|s + z/sigma|^2. Checked here in float64 to 1e-12, not assumed.
    torch.testing.assert_close(out, call(2) * w**2, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, call(2))

    if obj.needs_sigma:
        with pytest.raises(ConfigError, match=f"{name} needs a noise scale sigma"):
            obj(score, x, **options)
    else:
        with pytest.raises(ConfigError, match=f"{name} takes no sigma"):
            obj(score, x, sigma=0.3, **options)
    with pytest.raises(ConfigError, match=f"{name} takes no option 'bogus'"):
        call(2, bogus=1)
    foreign = sorted({kw for o in OBJECTIVES.values() for kw in o.options.values()} - set(obj.options.values()))
    for kw in foreign:  # another objective's option is refused too, not silently dropped
        with pytest.raises(ConfigError, match=f"takes no option '{kw}'"):
            call(2, **{kw: 1})
    # fixed draws through the contract's `noise`: the function's own z / v, and then no generator is needed
    if obj.noise_kwarg is None:
        with pytest.raises(ConfigError, match="draws no noise"):
            call(2, noise=torch.zeros_like(x))
    else:
        n = 2 * options.get("n_slices", options.get("n_samples", 1))
        fixed = 0.3 * torch.randn(n // 2, *x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
        if obj.name == "dsm":
            fixed = fixed[0]
        direct = obj.fn(score, x, **sigma, **options, sqrt_weight=w, **{obj.noise_kwarg: fixed})
        torch.testing.assert_close(obj(score, x, **sigma, **options, sqrt_weight=w, noise=fixed), direct,
                                   rtol=0, atol=0)
        assert not torch.equal(direct, out)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_spec_options_are_the_registry_kwargs(name):
    obj = OBJECTIVES[name]
    spec = ObjectiveSpec(name=name)
    fields = {f.name for f in dataclasses.fields(ObjectiveSpec)}
    assert set(obj.options) <= fields  # each option is a spec field ...
    params = inspect.signature(obj.fn).parameters
    assert all(params[kw].kind is inspect.Parameter.KEYWORD_ONLY for kw in obj.options.values())  # ... and a kwarg
    assert spec.options() == {kw: getattr(spec, field) for field, kw in obj.options.items()}
    assert set(spec.options()) == set(obj.options.values())
    changed = dataclasses.replace(spec, **{f: OPTION_VALUES[f] for f in obj.options})
    assert changed.options() == {kw: OPTION_VALUES[f] for f, kw in obj.options.items()}


# ----------------------------------------------------------------------------- (d) flags <-> spec fields
def _objects(command: str) -> dict[str, object]:
    """What each command generates its flags from (cli/runs.py), by the name of its set_defaults list."""
    return {
        "toy": {"preset_flags": ToyPreset(), "spec_flags": toy_spec("quick"),
                "command_flags": CommandOptions(out="runs/toy")},
        "train": {"preset_flags": ImagePreset(), "spec_flags": point_spec(),
                  "command_flags": CommandOptions(out="runs/diffusion")},
        "sample": {"sampler_flags": SamplerSpec(), "command_flags": CommandOptions()},
        "fid": {"sampler_flags": SamplerSpec(), "command_flags": CommandOptions()},
        "bpd": {"bpd_flags": LikelihoodOptions(), "command_flags": CommandOptions()},
    }[command]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def _field(obj: object, key: str) -> dataclasses.Field:
    *path, name = key.split(".")
    for part in path:
        assert is_dataclass_type(type(getattr(obj, part))), key
        obj = getattr(obj, part)
    (field,) = [f for f in dataclasses.fields(obj) if f.name == name]
    return field


@pytest.mark.parametrize("command", ["toy", "train", "sample", "bpd", "fid"])
def test_every_flag_is_one_field_and_every_field_flag_is_offered(command):
    sub = _subparser(command)
    actions = {s: a for a in sub._actions for s in a.option_strings}
    flags: dict[str, str] = {}
    from_bindings: set[str] = set()
    for group, obj in _objects(command).items():
        found = bindings(obj, command)
        assert found and sub.get_default(group) == found  # the parser was built from these very objects
        for b in found:
            field = _field(obj, b.key)
            assert command in field.metadata["commands"], b.key
            assert b.flag == (field.metadata["flag"] or "--" + field.name.replace("_", "-")), b.key
            assert b.type == type_hints(type(_owner(obj, b.key)))[field.name]
            assert b.flag not in flags, f"{b.flag} is both {flags.get(b.flag)} and {b.key}"
            flags[b.flag] = b.key
            assert b.flag in actions and actions[b.flag].dest == b.dest, b.flag
            from_bindings.add(b.flag)
            if b.type is bool:
                negative = "--no-" + b.flag[2:]
                assert actions[negative].dest == b.dest
                from_bindings.add(negative)
    extra = set(actions) - from_bindings - {"-h", "--help", "--set"}
    assert not extra, f"options of lcssm {command} that map to no field: {sorted(extra)}"
    # and no field that lists the command is left without its flag
    for obj in _objects(command).values():
        for key, field in _all_fields(obj):
            if command in field.metadata.get("commands", ()):
                assert flags.get(b_flag(field)) == key, key


def _owner(obj: object, key: str) -> object:
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    return obj


def _all_fields(obj: object, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _all_fields(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def b_flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


@pytest.fixture
def captured(monkeypatch):
    """The arguments the CLI hands the pipeline, instead of running it."""
    seen = {}

    def train_run(spec, out, **kw):
        seen.update(spec=spec, out=out, **kw)

    def sample_run(run_dir, overrides, **kw):
        seen.update(run_dir=run_dir, overrides=overrides, **kw)
        return {"file": "samples.npy"}

    def bpd_run(run_dir, options, **kw):
        seen.update(run_dir=run_dir, options=options, **kw)
        return {"bpd": 1.0, "n": 2, "data": "x"}

    for name, fn in (("train_run", train_run), ("sample_run", sample_run), ("bpd_run", bpd_run)):
        monkeypatch.setattr(pipeline, name, fn)
    return seen


def test_flags_and_set_reach_their_fields_as_typed_values(captured, tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", "--steps", "7", "--lr", "5e-4", "--antithetic", "--no-amp", "--objective", "ssm",
                 "--weighting", "g2", "--sde", "ve", "--sigma-min", "0.02", "--n-samples", "3", "--set",
                 "objective.t_min=1e-4", "--set", "model.n_hidden=2", "--set", "train.log_every=7", "--out", out,
                 "--no-progress"]) == 0
    spec = captured["spec"]
    assert isinstance(spec, RunSpec) and captured["out"] == out and captured["progress"] is False
    typed = [(spec.train.steps, 7, int), (spec.train.lr, 5e-4, float), (spec.objective.antithetic, True, bool),
             (spec.train.amp, False, bool), (spec.objective.name, "ssm", str), (spec.objective.weighting, "g2", str),
             (spec.sde.name, "ve", str), (spec.sde.sigma_min, 0.02, float), (spec.sampler.n_samples, 3, int),
             (spec.objective.t_min, 1e-4, float), (spec.model.n_hidden, 2, int), (spec.train.log_every, 7, int)]
    for value, expected, tp in typed:
        assert value == expected and type(value) is tp, (value, expected)
    assert spec.sde.sigma_max is None  # an optional float left out stays None (the SDE's default)

    # --set is applied after the flags; str | None flags of an image run, and "none" for None
    assert main(["train", "--preset", "tiny", "--cache-dir", "/some/cache", "--no-random-flip", "--holdout", "0.2",
                 "--sample-every", "0", "--steps", "5", "--set", "train.steps=9", "--out", out]) == 0
    spec = captured["spec"]
    assert spec.preset == "tiny" and spec.data.kind == "images" and spec.data.cache_dir == "/some/cache"
    assert spec.data.random_flip is False and spec.data.holdout == 0.2 and spec.grids.every == 0
    assert spec.train.steps == 9
    assert main(["train", "--preset", "tiny", "--cache-dir", "none", "--out", out]) == 0
    assert captured["spec"].data.cache_dir is None

    assert main(["sample", "RUN", "--ald-step-size", "0.001", "--no-denoise", "--n-samples", "5", "--sampler", "ald",
                 "--sample-seed", "3", "--set", "sampler.method=RK23", "--set", "sampler.langevin_steps=4"]) == 0
    assert captured["run_dir"] == "RUN" and captured["overrides"] == {
        "ald_step_size": 0.001, "denoise": False, "n_samples": 5, "name": "ald", "seed": 3, "method": "RK23",
        "langevin_steps": 4}
    assert type(captured["overrides"]["n_samples"]) is int

    assert main(["bpd", "RUN", "--n", "5", "--trace", "exact", "--batch-size", "7", "--t-min", "1e-4"]) == 0
    options = captured["options"]
    assert isinstance(options, LikelihoodOptions) and (options.n, options.trace, options.batch_size) == (5, "exact", 7)
    assert options.t_min == 1e-4 and options.data is None


@pytest.mark.parametrize("argv,words", [
    (["train", "--objective", "lcsss"], "--objective: objective.name must be one of exact_sm, ssm"),
    (["train", "--steps", "many"], "steps expects an int"),
    (["train", "--set", "objective.nope=1"], "unknown config key 'objective.nope'"),
    (["sample", "RUN", "--set", "train.steps=3"], "is not a sampler field"),
    (["train", "--stepz", "3"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, words, captured, capsys):
    with pytest.raises(SystemExit) as stop:
        code = main(argv)
        raise SystemExit(code)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert "spec" not in captured and "overrides" not in captured


def test_a_sampler_that_cannot_sample_the_run_is_refused_before_training(tmp_path, capsys):
    """The previous DiffusionConfig refused such a sampler when the config was built; the run must not train
    first and fail at its end."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--sampler", "langevin", "--hidden", "8", "--steps", "1", "--batch-size", "8",
                 "--n-samples", "4", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "langevin sampler does not apply" in err
    assert not list_checkpoints(out), "trained a run whose sampler was known not to apply"


# ---------------------------------------------------------------------------------------------- (e) --help
def _help(command: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _option_help(text: str, flag: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(flag + " ")]
    return " ".join(line.split())


def test_train_help_shows_the_point_defaults_and_what_the_digits_and_mnist_presets_use(capsys, monkeypatch):
    text = _help("train", capsys, monkeypatch)
    assert "(default: 3000; with --preset digits: 4000, mnist: 4000)" in _option_help(text, "--steps")
    assert "(default: 512; with --preset digits: 128, mnist: 64)" in _option_help(text, "--batch-size")
    assert "(default: vp; with --preset digits: ve, mnist: ve)" in _option_help(text, "--sde")
    assert "(default: lcss)" in _option_help(text, "--objective")


def test_toy_help_shows_defaults_and_the_paper_preset(capsys, monkeypatch):
    text = _help("toy", capsys, monkeypatch)
    assert "(default: checkerboard)" in _option_help(text, "--data")
    assert "(default: lcss)" in _option_help(text, "--objective")
    assert "(default: 0.1)" in _option_help(text, "--sigma")
    assert "(default: 1000; with --preset paper: 10000)" in _option_help(text, "--batch-size")
    assert "(default: 3000; with --preset paper: 20000)" in _option_help(text, "--steps")
    assert "batch 10k" in _option_help(text, "--preset")
    assert math.isclose(toy_spec("paper").train.batch_size, 10_000)


# ------------------------------------------------------------------ (f) --set model.config.FIELD and the sampler
def _conv_in_width(spec: RunSpec) -> int:
    from lcssm.models.precond import build_score_model

    model = dataclasses.replace(spec.model, sigma_data=spec.model.sigma_data or 1.0)  # measured when a run starts
    return build_score_model(model, spec.sde.build(), spec.data.shape[0]).backbone.conv_in.weight.shape[0]


def test_set_model_config_reaches_the_network_of_an_image_run(captured, tmp_path):
    """``--set model.config.FIELD=VALUE`` sets one hyper-parameter of the image network, typed by its config class
    (UNetConfig here); the saved config keeps its form (the same keys, JSON values) and the value."""
    base = image_spec(ImagePreset(preset="tiny"))
    assert base.model.config["nf"] == 8 and _conv_in_width(base) == 8
    spec = apply_overrides(base, ["model.config.nf=16", "model.config.ch_mult=(1, 2)", "model.config.dropout=0"])
    assert spec.model.config["nf"] == 16 and type(spec.model.config["nf"]) is int
    assert spec.model.config["ch_mult"] == [1, 2] and type(spec.model.config["dropout"]) is float
    assert set(spec.model.config) == set(base.model.config) and base.model.config["nf"] == 8  # input unchanged
    assert _conv_in_width(spec) == 16

    assert main(["train", "--preset", "tiny", "--set", "model.config.nf=16", "--out", str(tmp_path / "r")]) == 0
    assert captured["spec"].model.config == spec.model.config
    assert _conv_in_width(captured["spec"]) == 16


def test_a_set_model_config_value_is_written_and_read_back(tmp_path):
    spec = apply_overrides(_tiny_image_spec(), ["model.config.nf=16", "train.steps=1"])
    train_run(spec, tmp_path / "run", progress=False)
    saved = _config(tmp_path / "run")["model"]["config"]
    assert saved["nf"] == 16 and set(saved) == set(image_spec(ImagePreset(preset="tiny")).model.config)
    run = open_run(tmp_path / "run", device="cpu")
    assert run.spec.model.config["nf"] == 16 and run.model.backbone.conv_in.weight.shape[0] == 16
    assert run.spec == pipeline.resolved_spec(spec)


@pytest.mark.parametrize("item,match", [
    ("model.config.nff=16", r"^unknown config key 'model\.config\.nff'; valid keys: .*model\.config\.nf, "),
    ("model.config.nf=abc", r"^model\.config\.nf expects an int, got 'abc'"),
    ("model.config.nf=1.5", r"^model\.config\.nf expects an int"),
    ("model.config.resblock=big", r"^model\.config\.resblock must be one of biggan, ddpm, got 'big'"),
    ("model.config.nf=0", r"model\.config: UNetConfig\.nf must be >= 1, got 0"),
    ("model.config.nf.x=1", r"unknown config key 'model\.config\.nf\.x': model\.config\.nf is a value"),
])
def test_a_bad_model_config_override_is_an_error_naming_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(image_spec(ImagePreset(preset="tiny")), [item])


def test_model_config_of_an_mlp_has_no_fields_and_ncsnv2_has_its_own():
    with pytest.raises(ConfigError, match="unknown config key 'model.config.nf': model.config is a value"):
        apply_overrides(point_spec(), ["model.config.nf=16"])
    from lcssm.experiments.spec import ModelSpec
    from lcssm.models.ncsnv2 import NCSNv2Config

    small = dataclasses.asdict(NCSNv2Config(in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), dilations=(1, 1)))
    model = apply_overrides(ModelSpec(arch="ncsnv2", config=small), ["config.nf=4", "config.norm=groupnorm"])
    assert (model.config["nf"], model.config["norm"]) == (4, "groupnorm")
    with pytest.raises(ConfigError, match="config.norm must be one of instancenorm"):
        apply_overrides(ModelSpec(arch="ncsnv2", config=small), ["config.norm=batchnorm"])
    with pytest.raises(ConfigError, match="unknown config key 'config.resblock'; valid keys: config.in_channels"):
        apply_overrides(ModelSpec(arch="ncsnv2", config=small), ["config.resblock=ddpm"])  # a UNetConfig field


def test_sampler_values_take_the_override_path_with_errors_naming_the_key():
    spec = point_spec()
    assert pipeline.with_sampler(spec, {"n_steps": 7, "snr": 1, "ald_step_size": None}).sampler == \
        dataclasses.replace(spec.sampler, n_steps=7, snr=1.0)  # None keeps the saved value; ints become floats
    for overrides, match in [({"n_steps": "7"}, r"^sampler\.n_steps expects an int, got '7'"),
                             ({"snr": 0.0}, r"^sampler\.snr must be > 0"),
                             ({"nope": 1}, r"^sampler\.nope is not a sampler option; valid: "),
                             ({"name": "mala"}, "the mala sampler needs an energy model")]:
        with pytest.raises(ConfigError, match=match):
            pipeline.with_sampler(spec, overrides)


@pytest.mark.parametrize("argv,words", [
    (["sample", "RUN", "--set", "sampler.nope=1"], "sampler.nope is not a sampler field; valid: sampler.name, "),
    (["sample", "RUN", "--set", "sampler.n_steps=abc"], "sampler.n_steps expects an int, got 'abc'"),
    (["fid", "RUN", "--set", "sampler=3"], "sampler is not a sampler field"),
    (["train", "--preset", "tiny", "--set", "model.config.nf=abc"], "model.config.nf expects an int, got 'abc'"),
    (["train", "--preset", "tiny", "--set", "model.config.nff=1"], "unknown config key 'model.config.nff'"),
])
def test_bad_sampler_and_model_config_overrides_are_one_line_and_exit_2(argv, words, captured, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert "spec" not in captured and "overrides" not in captured
