"""Dataclass configs: the trainer's :class:`TrainConfig`, named presets, ``key=value`` overrides and validation.

A run's configuration is a tree of dataclasses (e.g. a toy run's config with a ``train: TrainConfig`` field).
Values given on the command line as ``--set train.lr=1e-4`` are coerced to the annotated type of the field
they set; an unknown key, a value of the wrong type or an out-of-range value is a :class:`ConfigError` whose
message names the key. Range checks live in each dataclass's ``__post_init__`` (the "validate hook"), so they
run whenever a config is built: from code, from overrides, or from a saved ``config.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from lcssm.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "TRAIN_PRESETS",
    "TrainConfig",
    "add_train_args",
    "apply_overrides",
    "check_types",
    "from_dict",
    "get_preset",
    "invalid",
    "parse_override",
    "to_jsonable",
    "train_config_from_args",
    "train_overrides_from_args",
    "validate",
]

T = TypeVar("T")

OPTIMIZERS = ("adam", "adamw")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null"})


def invalid(key: str, message: str) -> ConfigError:
    """A ConfigError for field ``key`` (message reads ``"{key} {message}"``).

    The key is kept on the exception (``err.key``) so that :func:`apply_overrides` can qualify it with the
    section it sits in (``steps`` -> ``train.steps``).
    """
    err = ConfigError(f"{key} {message}")
    err.key = key  # type: ignore[attr-defined]
    err.detail = message  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------------------------- TrainConfig
@dataclass
class TrainConfig:
    """Settings of the training loop (:func:`lcssm.train.train`); saved with every checkpoint.

    ``batch_size`` is the global batch: each of W data-parallel ranks gets ``batch_size // W`` rows.
    ``ema_decay`` = 0 turns EMA off (the EMA model is then the model itself). ``ckpt_every`` = 0 writes only
    the final checkpoint. ``warmup`` is a linear learning-rate warmup: step k (1-based) uses
    ``lr·min(1, k/warmup)``. ``grad_clip`` is a max global gradient norm (0 = off). ``amp`` enables bf16
    autocast on CUDA (ignored on CPU). ``max_nonfinite`` consecutive steps with a non-finite loss or gradient
    stop the run (:class:`lcssm.train.NonFiniteLossError`, exit code 3). ``ddp_find_unused`` is passed to
    DistributedDataParallel as ``find_unused_parameters``: it must be on for energy models, whose output bias
    gets no gradient from any score-matching loss (the score is ∇ₓf).
    """

    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup: int = 0
    grad_clip: float = 0.0
    ema_decay: float = 0.999
    ckpt_every: int = 0
    keep_last: int = 3
    log_every: int = 10
    amp: bool = False
    compile: bool = False
    max_nonfinite: int = 5
    ddp_find_unused: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0, got {self.lr}")
        _require(self.optimizer in OPTIMIZERS, "optimizer",
                 f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 f"must be >= 0, got {self.weight_decay}")
        for key in ("beta1", "beta2"):
            v = getattr(self, key)
            _require(0 <= v < 1, key, f"must lie in [0, 1), got {v}")
        _require(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        _require(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        _require(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip",
                 f"must be >= 0 (0 = off), got {self.grad_clip}")
        _require(0 <= self.ema_decay < 1, "ema_decay", f"must lie in [0, 1) (0 = off), got {self.ema_decay}")
        _require(self.ckpt_every >= 0, "ckpt_every", f"must be >= 0 (0 = final only), got {self.ckpt_every}")
        _require(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _require(self.max_nonfinite >= 1, "max_nonfinite", f"must be >= 1, got {self.max_nonfinite}")
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise invalid("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise invalid(key, message)


# ------------------------------------------------------------------------------------------ type handling
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(text: str, tp: Any, key: str) -> Any:
    """Parse the command-line string ``text`` as a value of type ``tp``; ConfigError naming ``key``."""
    if tp is Any:
        return text
    arms = _union_args(tp)
    if arms is not None:
        if type(None) in arms and text.strip().lower() in _NONE:
            return None
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _coerce(text, arm, key)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) if a is not type(None) else "none" for a in arms)
        raise invalid(key, f"expects {names}, got {text!r}")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for c in choices:
            try:
                if _coerce(text, type(c), key) == c:
                    return c
            except ConfigError:
                pass
        raise invalid(key, f"must be one of {', '.join(map(str, choices))}, got {text!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        s = text.strip()
        if s[:1] in "([" and s[-1:] in ")]":
            s = s[1:-1]
        parts = [p.strip() for p in s.split(",")] if s.strip() else []
        if parts and parts[-1] == "":  # "(1,)"
            parts = parts[:-1]
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            values = [_coerce(p, item, key) for p in parts]
        else:
            if len(parts) != len(args):
                raise invalid(key, f"expects {len(args)} comma-separated values, got {text!r}")
            values = [_coerce(p, a, key) for p, a in zip(parts, args)]
        return tuple(values) if origin is tuple else values
    if origin is dict or tp is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise invalid(key, f"expects a JSON object, got {text!r}")
        return value
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise invalid(key, f"expects a bool (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:  # 1e4 and 2000.0 are integers too
            f = float(text)
        except ValueError:
            f = math.nan
        if math.isfinite(f) and f.is_integer():
            return int(f)
        raise invalid(key, f"expects an int, got {text!r}")
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise invalid(key, f"expects a float, got {text!r}") from None
    if tp is str:
        return text
    if tp is Path:
        return Path(text)
    raise invalid(key, f"has type {_type_name(tp)}, which cannot be set from a string")


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Check (and lightly normalise: int -> float, list -> tuple) an already-typed ``value`` against ``tp``."""
    if tp is Any:
        return value
    arms = _union_args(tp)
    if arms is not None:
        if value is None and type(None) in arms:
            return None
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _check_value(value, arm, key)
            except ConfigError:
                pass
        raise invalid(key, f"expects {' or '.join(_type_name(a) for a in arms)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise invalid(key, f"must be one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise invalid(key, f"expects a {origin.__name__}, got {value!r}")
        args = typing.get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            items = [_check_value(v, item, key) for v in value]
        else:
            if args and len(value) != len(args):
                raise invalid(key, f"expects {len(args)} values, got {value!r}")
            items = [_check_value(v, a, key) for v, a in zip(value, args)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise invalid(key, f"expects a dict, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise invalid(key, f"expects a bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise invalid(key, f"expects an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise invalid(key, f"expects a float, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise invalid(key, f"expects a path, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise invalid(key, f"expects {tp.__name__}, got {value!r}")
    return value


def check_types(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its annotation (ints are accepted for floats and
    converted); ConfigError naming the field otherwise. Call it first in ``__post_init__``."""
    for f in dataclasses.fields(obj):
        tp = _hints(type(obj))[f.name]
        value = getattr(obj, f.name)
        if _is_dataclass_type(tp):
            if not isinstance(value, tp):
                raise invalid(f.name, f"expects a {tp.__name__}, got {value!r}")
            continue
        checked = _check_value(value, tp, f.name)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def validate(obj: T) -> T:
    """Re-run the type checks and ``__post_init__`` hooks of ``obj`` and every dataclass nested in it, e.g.
    after fields were assigned directly. Returns a fresh, validated copy."""
    return _rebuild(obj, {}, "")


# ---------------------------------------------------------------------------------------------- overrides
def parse_override(item: str) -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; ConfigError unless the item has the form key=value."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must have the form key=value (e.g. train.lr=1e-4)")
    return key, value.strip()


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.init]


def _qualify(e: ConfigError, prefix: str) -> ConfigError:
    if not prefix:
        return e
    if hasattr(e, "key") and hasattr(e, "detail"):
        return invalid(prefix + e.key, e.detail)
    return ConfigError(f"{prefix.rstrip('.')}: {e}")


def _rebuild(obj: Any, tree: Mapping[str, Any], prefix: str) -> Any:
    """Copy of dataclass ``obj`` with the string values in ``tree`` (nested dict keyed by field) applied."""
    hints = _hints(type(obj))
    names = _field_names(obj)
    for name in tree:
        if name not in names:
            raise ConfigError(f"unknown config key {prefix + name!r}; valid keys: "
                              + ", ".join(prefix + n for n in names))
    changes: dict[str, Any] = {}
    for name in names:
        value = getattr(obj, name)
        tp = hints[name]
        key = prefix + name
        if name in tree:
            sub = tree[name]
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                if not isinstance(sub, dict):
                    raise ConfigError(f"{key} is a section, not a value; set one of its keys, e.g. "
                                      f"{key}.{_field_names(value)[0]}=...")
                changes[name] = _rebuild(value, sub, key + ".")
            elif isinstance(sub, dict):
                first = next(iter(sub))
                raise ConfigError(f"unknown config key {key + '.' + first!r}: {key} is a value, not a section")
            else:
                changes[name] = _coerce(sub, tp, key)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[name] = _rebuild(value, {}, key + ".")
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        raise _qualify(e, prefix) from None


def apply_overrides(obj: T, overrides: Iterable[str]) -> T:
    """Apply ``key=value`` overrides (dotted keys for nested dataclasses, e.g. ``train.lr=1e-4``) to the
    dataclass ``obj``; returns a new, validated object (``obj`` is not modified).

    Values are coerced from the field annotation: bool (true/false/1/0/yes/no/on/off), int (also ``1e4``),
    float, str, Path, ``X | None`` (``none``/``null``), Literal, ``tuple[...]``/``list[...]``
    (comma-separated, optional brackets) and dict (JSON). A later override of the same key wins. Raises
    ConfigError naming the key on a malformed item, an unknown key, a value of the wrong type, or a value
    the dataclass's ``__post_init__`` rejects.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = tree
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                if nxt is not None:
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is set as a value and used as a section "
                                      f"in {key!r}")
                nxt = node[part] = {}
            node = nxt
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"{key} is a section, not a value")
        node[parts[-1]] = value
    return _rebuild(obj, tree, "")


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (JSON-loaded) dict; nested dataclasses from nested dicts, lists become
    tuples where annotated. Unknown keys and wrongly typed values raise ConfigError naming the key; missing
    keys take the field's default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid keys: "
                              + ", ".join(prefix + n for n in names))
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, value, prefix=prefix + key + ".")
        else:
            kwargs[key] = _check_value(value, tp, prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise _qualify(e, prefix) from None


# ------------------------------------------------------------------------------------------ argparse glue
#: (option, TrainConfig field, argparse type, help)
_TRAIN_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--steps", "steps", int, "total optimizer steps (--resume continues to this total)"),
    ("--batch-size", "batch_size", int, "global batch size (split over data-parallel ranks)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--ema", "ema_decay", float, "EMA decay of the weights used for sampling/evaluation (0 = off)"),
    ("--warmup", "warmup", int, "linear learning-rate warmup steps"),
    ("--grad-clip", "grad_clip", float, "max global gradient norm (0 = off)"),
    ("--ckpt-every", "ckpt_every", int, "steps between checkpoints (0 = final only)"),
    ("--keep-last", "keep_last", int, "checkpoints kept"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
)


def add_train_args(parser: argparse.ArgumentParser, base: TrainConfig | None = None) -> argparse._ArgumentGroup:
    """Add the trainer's options to ``parser`` (in a "training" group), with the defaults of ``base`` shown
    in the help.

    Options that are not given are absent from the parsed namespace (``argparse.SUPPRESS``), so
    :func:`train_config_from_args` can apply them on top of any preset. ``--resume`` and ``--overwrite``
    (pass both to :func:`lcssm.train.train`) are always present, False by default; ``--set KEY=VALUE`` is
    repeatable and collected in ``args.set``.
    """
    base = base if base is not None else TrainConfig()
    g = parser.add_argument_group("training")
    for option, name, typ, text in _TRAIN_OPTIONS:
        g.add_argument(option, dest=name, type=typ, default=argparse.SUPPRESS,
                       help=f"{text} (default: {getattr(base, name)})")
    g.add_argument("--amp", dest="amp", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help=f"bf16 autocast on CUDA; ignored on CPU (default: {base.amp})")
    g.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help=f"torch.compile the model (default: {base.compile})")
    g.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in the output directory from its latest good checkpoint, to the same "
                   "--steps total")
    g.add_argument("--overwrite", action="store_true", default=False,
                   help="start afresh in an output directory that holds checkpoints of an earlier run, deleting "
                   "them (without it such a directory is refused)")
    g.add_argument("--set", dest="set", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.warmup=100 (repeatable; applied last)")
    return g


_ARG_FIELDS = tuple(name for _, name, _, _ in _TRAIN_OPTIONS) + ("amp", "compile")


def train_overrides_from_args(args: argparse.Namespace, prefix: str = "", *, include_set: bool = True) -> list[str]:
    """The options of :func:`add_train_args` that were given, as ``"{prefix}field=value"`` overrides
    (followed by the ``--set`` items unchanged when ``include_set``). Use ``prefix="train."`` for a config
    whose TrainConfig is its ``train`` field, and apply the result with :func:`apply_overrides`."""
    out = [f"{prefix}{name}={getattr(args, name)}" for name in _ARG_FIELDS if getattr(args, name, None) is not None]
    if include_set:
        out += list(getattr(args, "set", None) or [])
    return out


def train_config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` with the options given on the command line and then the ``--set`` overrides applied.

    ``--set`` keys name TrainConfig fields; a leading ``train.`` is accepted too (the spelling the commands
    with nested configs use).
    """
    sets = []
    for item in getattr(args, "set", None) or []:
        key, value = parse_override(item)
        sets.append(f"{key.removeprefix('train.')}={value}")
    return apply_overrides(base, train_overrides_from_args(args, include_set=False) + sets)


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (dataclasses -> dicts, tuples -> lists, Paths -> str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device | torch.dtype):
        return str(o)
    if isinstance(o, Sequence | set | frozenset):
        return list(o)
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"config value {o!r} of type {type(o).__name__} is not JSON-serialisable")


# ------------------------------------------------------------------------------------------------ presets
#: named trainer presets; commands with their own presets embed a TrainConfig in them
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "toy": TrainConfig(steps=3000, batch_size=1000, lr=1e-3, ema_decay=0.0, log_every=50),
    "debug": TrainConfig(steps=20, batch_size=64, ema_decay=0.0, log_every=1, ckpt_every=10),
}


def get_preset(presets: Mapping[str, T], name: str, what: str = "preset") -> T:
    """A deep copy of ``presets[name]``; ConfigError naming the valid names otherwise."""
    try:
        return copy.deepcopy(presets[name])
    except (KeyError, TypeError):
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(presets)}") from None
