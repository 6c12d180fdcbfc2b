"""Config dataclasses: key=value overrides with type coercion, validation hooks, presets, argparse glue."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lcssm.config import (
    TRAIN_PRESETS,
    TrainConfig,
    add_train_args,
    apply_overrides,
    from_dict,
    get_preset,
    invalid,
    parse_override,
    train_config_from_args,
    train_overrides_from_args,
    validate,
)
from lcssm.errors import ConfigError


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
    with pytest.raises(ConfigError, match=r"^train\.steps must be >= 0, got -3"):
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
    with pytest.raises(ConfigError, match=r"^train\.steps must be >= 0"):
        from_dict(RunConfig, {"train": {"steps": -1}})


def test_presets_by_name():
    cfg = get_preset(TRAIN_PRESETS, "toy")
    assert cfg == TRAIN_PRESETS["toy"] and cfg is not TRAIN_PRESETS["toy"]
    with pytest.raises(ConfigError, match="unknown preset 'tiny'; valid: default, toy, debug"):
        get_preset(TRAIN_PRESETS, "tiny")


def _parser(base: TrainConfig) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_train_args(p, base)
    return p


def test_train_args_apply_on_top_of_any_base():
    base = TrainConfig(steps=100, lr=0.01, warmup=7, amp=True)
    p = _parser(TrainConfig())
    args = p.parse_args(["--steps", "5", "--ema", "0.5", "--no-amp", "--grad-clip", "2", "--set", "warmup=3",
                         "--set", "train.keep_last=9", "--resume"])
    cfg = train_config_from_args(args, base)
    assert (cfg.steps, cfg.ema_decay, cfg.amp, cfg.grad_clip, cfg.warmup, cfg.keep_last) == (5, 0.5, False, 2.0, 3, 9)
    assert cfg.lr == 0.01  # not given: the base's value, not the parser's default
    assert args.resume is True and args.overwrite is False
    assert p.parse_args([]).resume is False and p.parse_args(["--overwrite"]).overwrite is True
    assert train_overrides_from_args(args, "train.")[:2] == ["train.steps=5", "train.ema_decay=0.5"]
    assert train_config_from_args(p.parse_args([]), base) == base


def test_train_args_help_shows_the_base_defaults():
    text = " ".join(_parser(TrainConfig(steps=1234, ckpt_every=55)).format_help().split())
    for option in ("--steps", "--batch-size", "--lr", "--ema", "--warmup", "--grad-clip", "--ckpt-every",
                   "--keep-last", "--resume", "--overwrite", "--amp", "--compile", "--device", "--seed", "--set"):
        assert option in text, option
    assert "(default: 1234)" in text and "(default: 55)" in text


@pytest.mark.parametrize("argv,match", [
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--set", "lr=x"], "^lr expects a float"),
    (["--steps", "-2"], "^steps must be >= 0"),
    (["--batch-size", "0"], "^batch_size must be >= 1"),
])
def test_train_args_errors_name_the_key(argv, match):
    args = _parser(TrainConfig()).parse_args(argv)
    with pytest.raises(ConfigError, match=match):
        train_config_from_args(args, TrainConfig())
