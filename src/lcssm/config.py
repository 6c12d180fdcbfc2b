"""Typed dataclass configs: field metadata for the command line, ``key=value`` overrides, validation, JSON.

A run's configuration is a tree of dataclasses (e.g. a toy run's config with a ``train: TrainConfig`` field).
Values given on the command line as ``--set train.lr=1e-4`` are coerced to the annotated type of the field
they set; an unknown key, a value of the wrong type or an out-of-range value is a :class:`ConfigError` whose
message names the key. Range checks live in each dataclass's ``__post_init__`` (the "validate hook"), so they
run whenever a config is built: from code, from overrides, or from a saved ``config.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from lcssm.errors import ConfigError

__all__ = [
    "apply_overrides",
    "check_types",
    "from_dict",
    "invalid",
    "meta",
    "parse_override",
    "require",
    "setting",
    "to_jsonable",
    "validate",
]

T = TypeVar("T")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null"})


def meta(help: str, *, flag: str | None = None, commands: tuple[str, ...] = (),
         choices: tuple[str, ...] | None = None, data_kind: str | None = None) -> dict[str, Any]:
    """Field metadata from which the command line is generated (:mod:`lcssm.cli.options`): the ``help`` text, the
    ``flag`` (default ``--field-name``), the ``commands`` that offer it as a flag, the valid ``choices`` (shown in
    the help) and the ``data_kind`` (``points`` or ``images``) a flag applies to, if only one. Every field is
    reachable with ``--set section.field=value`` whatever its ``commands``."""
    return {"help": help, "flag": flag, "commands": commands, "choices": choices, "data_kind": data_kind}


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with ``default`` and the command-line metadata :func:`meta` builds from ``help`` and ``kw``."""
    return dataclasses.field(default=default, metadata=meta(help, **kw))


def invalid(key: str, message: str) -> ConfigError:
    """A ConfigError for field ``key`` (message reads ``"{key} {message}"``).

    The key is kept on the exception (``err.key``) so that :func:`apply_overrides` can qualify it with the
    section it sits in (``steps`` -> ``train.steps``).
    """
    err = ConfigError(f"{key} {message}")
    err.key = key  # type: ignore[attr-defined]
    err.detail = message  # type: ignore[attr-defined]
    return err


def require(ok: bool, key: str, message: str) -> None:
    """ConfigError for field ``key`` (:func:`invalid`) unless ``ok``."""
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
        return _coerce_sequence(text, tp, key)
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


def _coerce_sequence(text: str, tp: Any, key: str) -> Any:
    """Comma-separated ``text`` (optional brackets) as a ``tuple[...]`` / ``list[...]`` of the annotated items."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
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
