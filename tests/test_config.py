"""Config dataclasses: key=value overrides with type coercion, validation hooks, the run presets and the command
line generated from dataclass fields (lcssm.cli.options)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lcssm.cli import Parser, main
from lcssm.cli.options import Binding, CommandOptions, add_options, apply_options, bindings
from lcssm.config import apply_overrides, check_types, from_dict, invalid, meta, parse_override, validate
from lcssm.errors import ConfigError
from lcssm.experiments.presets import TOY_PRESETS, ToyPreset, point_spec, toy_spec
from lcssm.experiments.spec import RunSpec
from lcssm.training.config import TrainConfig


@dataclass
class Inner:
    depth: int = 2
    widths: tuple[int, ...] = (8, 16)
    pair: tuple[float, str] = (0.5, "a")
    note: str | None = None
    scale: float | None = 1.0


@dataclass
class RunConfig:
    """A run config in the style of the commands': fields, a nested section and the trainer's settings."""

    sigma: float = 0.1
    name: str = "run"
    mode: Literal["fast", "exact"] = "fast"
    flag: bool = False
    path: Path = Path("data.npy")
    tags: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise invalid("sigma", f"must be > 0, got {self.sigma}")


def test_overrides_coerce_every_annotated_type():
    base = RunConfig()
    cfg = apply_overrides(base, [
        "sigma=0.25", "name=x=y", "mode=exact", "flag=yes", "path=/tmp/p.npy", "tags=a,b", 'extra={"k": 1}',
        "inner.depth=1e3", "inner.widths=(1, 2, 3)", "inner.pair=[2,b]", "inner.note=hello", "inner.scale=none",
        "train.lr=1e-4", "train.amp=TRUE", "train.steps=5", "train.steps=7", "train.lr=2",
    ])
    assert cfg.sigma == 0.25 and cfg.name == "x=y" and cfg.mode == "exact" and cfg.flag is True
    assert cfg.path == Path("/tmp/p.npy") and cfg.tags == ["a", "b"] and cfg.extra == {"k": 1}
    assert cfg.inner == Inner(depth=1000, widths=(1, 2, 3), pair=(2.0, "b"), note="hello", scale=None)
    assert cfg.train.steps == 7  # the later override wins
    assert cfg.train.amp is True and isinstance(cfg.train.lr, float) and cfg.train.lr == 2.0
    assert base == RunConfig()  # the input is not modified
    for text, value in [("true", True), ("1", True), ("on", True), ("False", False), ("0", False), ("off", False)]:
        assert apply_overrides(base, [f"flag={text}"]).flag is value


@pytest.mark.parametrize("item,key", [
    ("nope=1", "nope"),
    ("train.nope=1", "train.nope"),
    ("inner.widthz=1", "inner.widthz"),
])
def test_unknown_key_is_an_error_naming_it_and_the_valid_keys(item, key):
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), [item])
    msg = str(e.value)
    assert f"unknown config key {key!r}" in msg
    section = key.rpartition(".")[0]
    some_valid = {"": "sigma", "train": "train.lr", "inner": "inner.depth"}[section]
    assert some_valid in msg


@pytest.mark.parametrize("item,key,expected", [
    ("train.steps=abc", "train.steps", "int"),
    ("train.steps=2.5", "train.steps", "int"),
    ("train.lr=fast", "train.lr", "float"),
    ("train.amp=maybe", "train.amp", "bool"),
    ("sigma=", "sigma", "float"),
    ("mode=slow", "mode", "fast, exact"),
    ("inner.pair=1,2,3", "inner.pair", "2 comma-separated"),
    ("inner.widths=1,x", "inner.widths", "int"),
    ("inner.scale=big", "inner.scale", "float or none"),
    ("extra=[1]", "extra", "JSON object"),
])
def test_wrong_type_is_an_error_naming_the_key(item, key, expected):
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), [item])
    assert str(e.value).startswith(key + " ") and expected in str(e.value), str(e.value)


@pytest.mark.parametrize("item,key", [
    ("sigma=0", "sigma"),
    ("sigma=-1", "sigma"),
    ("sigma=nan", "sigma"),
    ("train.steps=-1", "train.steps"),
    ("train.lr=0", "train.lr"),
    ("train.lr=inf", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("train.ema_decay=-0.1", "train.ema_decay"),
    ("train.keep_last=0", "train.keep_last"),
    ("train.warmup=-5", "train.warmup"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.max_nonfinite=0", "train.max_nonfinite"),
    ("train.optimizer=sgd", "train.optimizer"),
    ("train.lr_decay=linear", "train.lr_decay"),
    ("train.device=gpu", "train.device"),
    ("train.beta2=1", "train.beta2"),
])
def test_out_of_range_value_is_an_error_naming_the_key(item, key):
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), [item])
    assert str(e.value).startswith(key + " must"), str(e.value)


@pytest.mark.parametrize("item,match", [
    ("sigma", "key=value"),
    ("=3", "key=value"),
    ("train=3", "train is a section"),
    ("sigma.x=1", "sigma is a value, not a section"),
])
def test_malformed_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(RunConfig(), [item])


def test_parse_override_splits_at_the_first_equals_sign():
    assert parse_override(" train.lr = 1e-4 ") == ("train.lr", "1e-4")
    assert parse_override("data=a=b") == ("data", "a=b")


def test_trainconfig_checks_types_when_built_in_code():
    with pytest.raises(ConfigError, match="^steps expects an int"):
        TrainConfig(steps=2.5)
    with pytest.raises(ConfigError, match="^amp expects a bool"):
        TrainConfig(amp="yes")
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_validate_reruns_the_hooks_after_direct_assignment():
    cfg = RunConfig()
    cfg.train.steps = -3
    with pytest.raises(ConfigError, match=r"^train\.steps must be >= 1, got -3"):
        validate(cfg)
    cfg.train.steps = 3
    assert validate(cfg) == cfg


def test_from_dict_round_trips_through_json_and_rejects_bad_keys():
    cfg = apply_overrides(RunConfig(), ["inner.widths=3,4", "train.lr=0.5", "tags=x"])
    data = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    assert from_dict(RunConfig, data) == cfg  # lists back to tuples, str back to Path
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        from_dict(RunConfig, {"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match="^train.steps expects an int"):
        from_dict(RunConfig, {"train": {"steps": "10"}})
    with pytest.raises(ConfigError, match=r"^train\.steps must be >= 1"):
        from_dict(RunConfig, {"train": {"steps": -1}})


def test_toy_presets_by_name():
    """Each call builds a fresh spec (no shared state between runs); paper is App. B; unknown names list the valid."""
    quick = toy_spec("quick")
    assert quick == toy_spec() and quick is not toy_spec("quick") and quick.train is not toy_spec("quick").train
    assert TOY_PRESETS == ("quick", "paper") and quick.preset == "quick" and quick.command == "toy"
    paper = toy_spec("paper")
    assert (paper.train.steps, paper.train.batch_size, paper.sampler.langevin_step_size) == (20_000, 10_000, 0.1)
    assert dataclasses.replace(paper, preset="quick", train=quick.train, sampler=quick.sampler) == quick
    for make in (toy_spec, lambda name: ToyPreset(preset=name)):
        with pytest.raises(ConfigError, match="unknown toy preset 'tiny'; valid: quick, paper"):
            make("tiny")


def test_overrides_on_a_run_spec_reach_every_section_and_rerun_its_checks():
    spec = apply_overrides(point_spec(), ["train.steps=4", "sampler.n_steps=20", "objective.center=data",
                                          "sde.beta_max=10", "model.hidden=32", "grids.every=2"])
    assert (spec.train.steps, spec.sampler.n_steps, spec.objective.center) == (4, 20, "data")
    assert (spec.sde.beta_max, spec.model.hidden, spec.grids.every) == (10.0, 32, 2)
    assert spec.sde.beta_min is None and point_spec().train.steps == 3000  # others untouched, input unchanged
    with pytest.raises(ConfigError, match=r"^sampler\.snr must be > 0"):  # a section's own check, qualified
        apply_overrides(spec, ["sampler.snr=0"])
    with pytest.raises(ConfigError, match="has no closed-form marginal; use --center local"):  # across sections
        apply_overrides(spec, ["sde.name=tanh"])
    with pytest.raises(ConfigError, match="the heun sampler does not apply .* use pc or ode or pf_heun"):
        apply_overrides(spec, ["sde.name=tanh", "objective.center=simulated"])
    tanh = ["sde.name=tanh", "objective.center=simulated", "objective.time_sampling=uniform", "sampler.name=pc"]
    assert apply_overrides(spec, tanh).sde.name == "tanh"
    with pytest.raises(ConfigError, match="does not apply to the 've' SDE"):
        apply_overrides(spec, ["sde.name=ve"])  # beta_max=10 was set above
    with pytest.raises(ConfigError, match="objective lcss without an SDE needs objective.sigma"):
        apply_overrides(toy_spec(), ["objective.sigma=none"])
    with pytest.raises(ConfigError, match="objective.sigma applies to runs without an SDE"):
        apply_overrides(point_spec(), ["objective.sigma=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'sample'; valid keys: .*sampler"):
        apply_overrides(point_spec(), ["sample.n_steps=20"])
    with pytest.raises(ConfigError, match="format must be 'lcssm-run-v2'"):
        RunSpec(format="v1")


# ---------------------------------------------------------------------------------- generated command line
def _f(default, help, **kw):
    return field(default=default, metadata=meta(help, **kw))


@dataclass
class Section:
    steps: int = _f(10, "number of steps", commands=("run",))
    rate: float = _f(0.5, "the rate", flag="--lr", commands=("run",))
    amp: bool = _f(False, "mixed precision", commands=("run", "other"))
    mode: str = _f("fast", "how", commands=("run",), choices=("fast", "exact"))
    note: str | None = _f(None, "a note", commands=("run",))
    depth: int = _f(3, "only for --set and the other command", commands=("other",))

    def __post_init__(self) -> None:
        check_types(self)
        if self.steps < 0:
            raise invalid("steps", f"must be >= 0, got {self.steps}")
        if self.mode not in ("fast", "exact"):
            raise invalid("mode", f"must be one of fast, exact, got {self.mode!r}")


@dataclass
class Options:
    section: Section = field(default_factory=Section)
    seed: int = _f(0, "random seed", flag="--sample-seed", commands=("run",))
    hidden: int = 8  # no metadata: never a flag


def _cli(obj, command="run", **kw):
    p = Parser(prog="prog run")
    found = add_options(p, obj, command, **kw)
    p.add_argument("--set", dest="set", action="append", default=argparse.SUPPRESS)
    return p, found


def test_bindings_one_flag_per_field_for_the_command():
    found = bindings(Options(), "run")
    assert [(b.flag, b.key, b.dest) for b in found] == [
        ("--steps", "section.steps", "section__steps"), ("--lr", "section.rate", "section__rate"),
        ("--amp", "section.amp", "section__amp"), ("--mode", "section.mode", "section__mode"),
        ("--note", "section.note", "section__note"), ("--sample-seed", "seed", "seed")]
    assert found[0] == Binding("--steps", "section.steps", "section__steps", int)
    assert found[4].type == str | None
    assert [b.flag for b in bindings(Options(), "other")] == ["--amp", "--depth"]
    assert bindings(Options(), "nothing") == []


def test_flags_apply_typed_values_on_top_of_any_base():
    base = Options(section=Section(steps=100, rate=0.01, mode="exact", note="n"), seed=7)
    p, found = _cli(Options())  # the parser's defaults play no part: flags not given stay absent
    args = p.parse_args(["--steps", "1e3", "--lr", "2", "--amp", "--note", "none", "--sample-seed", "3",
                         "--set", "section.depth=5", "--set", "hidden=4"])
    assert not hasattr(args, "section__mode")
    got = apply_options(base, args, found, with_set=True)
    assert got == Options(section=Section(steps=1000, rate=2.0, amp=True, mode="exact", note=None, depth=5),
                          seed=3, hidden=4)
    assert isinstance(got.section.steps, int) and isinstance(got.section.rate, float)
    assert base == Options(section=Section(steps=100, rate=0.01, mode="exact", note="n"), seed=7)  # not modified
    assert apply_options(base, p.parse_args([]), found, with_set=True) == base
    assert apply_options(base, args, found).section.depth == 3  # --set only with with_set
    on = Options(section=Section(amp=True))
    assert apply_options(on, p.parse_args(["--no-amp"]), found).section.amp is False  # BooleanOptionalAction
    assert apply_options(on, p.parse_args([]), found).section.amp is True


def test_help_shows_the_base_values_choices_and_notes():
    p, _ = _cli(Options(section=Section(steps=1234, note=None)), notes={"section.rate": "with --preset x: 0.1"})
    text = " ".join(p.format_help().split())
    for flag in ("--steps INT", "--lr FLOAT", "--amp, --no-amp", "--mode NAME", "--note STR", "--sample-seed INT"):
        assert flag in text, flag
    assert "--depth" not in text and "--hidden" not in text
    assert "number of steps (default: 1234)" in text and "a note (default: none)" in text
    assert "how (fast, exact) (default: fast)" in text and "the rate (default: 0.5; with --preset x: 0.1)" in text
    p, _ = _cli(Options(), default="the run's")
    assert "number of steps (default: the run's)" in " ".join(p.format_help().split())


def test_every_flag_states_its_default_once(capsys):
    """A field's ``default_text`` (``lcssm bpd --n``: in words) replaces the generated "(default: none)"; every
    generated flag of every command says its default exactly once."""
    from lcssm.cli import build_parser, main

    parser = build_parser()
    for name, sub in parser.commands.items():
        for action in sub._actions:
            if action.default is argparse.SUPPRESS and action.help and action.dest not in ("help", "set"):
                assert action.help.count("default:") == 1 and action.help.count("(default:") == 1, (
                    name, action.option_strings, action.help)
    with pytest.raises(SystemExit):
        main(["bpd", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "number of held-out points / images (default: 1000 points; the whole test split of images) --trace" in text


def test_trainer_flags_of_the_run_commands(capsys):
    """TrainConfig's flags, with the toy preset's values as the defaults shown; the command options beside them."""
    for command in ("toy", "train"):
        keys = {b.flag: b.key for b in bindings(RunSpec(train=TrainConfig()), command) if b.key.startswith("train.")}
        assert keys == {"--steps": "train.steps", "--batch-size": "train.batch_size", "--lr": "train.lr",
                        "--warmup": "train.warmup", "--lr-decay": "train.lr_decay",
                        "--grad-clip": "train.grad_clip", "--ema": "train.ema_decay",
                        "--ckpt-every": "train.ckpt_every", "--ckpt-minutes": "train.ckpt_minutes",
                        "--keep-last": "train.keep_last", "--amp": "train.amp",
                        "--compile": "train.compile", "--seed": "train.seed", "--device": "train.device"}
        assert {b.flag for b in bindings(CommandOptions(), command)} >= {"--out", "--resume", "--overwrite",
                                                                          "--progress"}
    with pytest.raises(SystemExit) as e:
        main(["toy", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--steps", "--batch-size", "--lr", "--ema", "--warmup", "--grad-clip", "--ckpt-every",
                   "--keep-last", "--resume", "--overwrite", "--amp", "--compile", "--device", "--seed", "--set",
                   "--no-progress"):
        assert option in text, option
    quick = toy_spec("quick").train
    assert f"total optimizer steps (--resume continues to this total) (default: {quick.steps}" in text
    assert f"(default: {quick.batch_size}; with --preset paper: 10000)" in text


@pytest.mark.parametrize("argv,match", [
    (["--set", "nope=1"], "^unknown config key 'nope'"),
    (["--set", "section.rate=x"], r"^section\.rate expects a float"),
    (["--set", "section.steps=-2"], r"^section\.steps must be >= 0"),
    (["--steps", "-2"], r"^--steps: section\.steps must be >= 0, got -2$"),
    (["--mode", "slow"], r"^--mode: section\.mode must be one of fast, exact, got 'slow'$"),
])
def test_option_errors_name_the_flag_or_key(argv, match):
    p, found = _cli(Options())
    with pytest.raises(ConfigError, match=match):
        apply_options(Options(), p.parse_args(argv), found, with_set=True)


@pytest.mark.parametrize("argv,message", [
    (["--steps", "x"], "argument --steps: section.steps expects an int, got 'x'"),
    (["--steps", "2.5"], "argument --steps: section.steps expects an int, got '2.5'"),
    (["--lr", "fast"], "argument --lr: section.rate expects a float, got 'fast'"),
    (["--amp=yes"], "argument --amp/--no-amp: ignored explicit argument 'yes'"),
    (["--ste", "3"], "unrecognized arguments: --ste 3"),  # no abbreviations
    (["--steps"], "argument --steps: expected one argument"),
])
def test_parse_errors_are_one_line_naming_the_flag(argv, message, capsys):
    p, _ = _cli(Options())
    with pytest.raises(SystemExit) as e:
        p.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"prog run: error: {message} (see prog run --help)\n"


def test_a_field_has_one_flag():
    """Two fields with the same flag cannot both be offered: argparse refuses the second."""
    @dataclass
    class Clash:
        a: int = _f(1, "a", flag="--x", commands=("run",))
        b: int = _f(2, "b", flag="--x", commands=("run",))

    with pytest.raises(argparse.ArgumentError, match="conflicting option string: --x"):
        _cli(Clash())
