"""Typed dataclass configs: field metadata for the command line, ``key=value`` overrides, validation, JSON.

A run's configuration is a tree of dataclasses (e.g. a toy run's config with a ``train: TrainConfig`` field).
Values given on the command line as ``--set train.lr=1e-4`` are coerced to the annotated type of the field
they set; an unknown key, a value of the wrong type or an out-of-range value is a :class:`ConfigError` whose
message names the key. Range checks live in each dataclass's ``__post_init__`` (the "validate hook"), so they
run whenever a config is built: from code, from overrides, or from a saved ``config.json``.

Every override takes one path, the tree walk of :func:`apply_values`: typed values at dotted keys are checked
against the field annotations, ``key=value`` text (:func:`apply_overrides`) is coerced to them
(:func:`coerce`), then every section is rebuilt and validated. :func:`override_values` coerces text without
applying it (for values handed on typed, e.g. the sampler options of ``lcssm sample``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from lcssm.errors import ConfigError

__all__ = [
    "apply_overrides",
    "apply_values",
    "check_types",
    "check_value",
    "coerce",
    "from_dict",
    "invalid",
    "is_dataclass_type",
    "meta",
    "override_values",
    "parse_override",
    "require",
    "setting",
    "to_jsonable",
    "type_hints",
    "validate",
]

T = TypeVar("T")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"none", "null"})


def meta(help: str, *, flag: str | None = None, commands: tuple[str, ...] = (),
         choices: tuple[str, ...] | None = None, data_kind: str | None = None, default_text: str | None = None,
         schema: Callable[[Any], type | None] | None = None) -> dict[str, Any]:
    """Field metadata from which the command line is generated (:mod:`lcssm.cli.options`): the ``help`` text, the
    ``flag`` (default ``--field-name``), the ``commands`` that offer it as a flag, the valid ``choices`` (shown in
    the help), the ``data_kind`` (``points`` or ``images``) a flag applies to, if only one, and the ``default_text``:
    the default in words where the field's value does not say it (None: "the SDE's"). Every field is reachable with
    ``--set section.field=value`` whatever its ``commands``.

    ``schema`` (for a dict field): a function of the dataclass holding the field that returns the dataclass whose
    fields the dict holds (or None), so that ``--set field.NAME=value`` sets one of them, typed by that dataclass;
    the field stays a plain dict."""
    return {"help": help, "flag": flag, "commands": commands, "choices": choices, "data_kind": data_kind,
            "default_text": default_text, "schema": schema}


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
_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of the fields of dataclass ``cls`` (:func:`typing.get_type_hints`, cached)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def is_dataclass_type(tp: Any) -> bool:
    """Whether the annotation ``tp`` is a dataclass type, i.e. the field it annotates is a nested section."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# ------------------------------------------------------------------------- coercion: command-line text
def _parse_bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise invalid(key, f"expects a bool (true/false), got {text!r}")


def _parse_int(text: str, key: str) -> int:
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


def _parse_float(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise invalid(key, f"expects a float, got {text!r}") from None


def _parse_str(text: str, key: str) -> str:
    return text


def _parse_path(text: str, key: str) -> Path:
    return Path(text)


#: how the command-line text of a field of each scalar type is parsed: ``parse(text, key) -> value``
_PARSERS: dict[type, Callable[[str, str], Any]] = {
    bool: _parse_bool, int: _parse_int, float: _parse_float, str: _parse_str, Path: _parse_path,
}


def _coerce_union(text: str, arms: tuple[Any, ...], key: str) -> Any:
    """``text`` as the first arm of a union it parses as (``none``/``null`` for an optional one)."""
    if type(None) in arms and text.strip().lower() in _NONE:
        return None
    for arm in arms:
        if arm is type(None):
            continue
        try:
            return coerce(text, arm, key)
        except ConfigError:
            pass
    names = " or ".join(_type_name(a) if a is not type(None) else "none" for a in arms)
    raise invalid(key, f"expects {names}, got {text!r}")


def _coerce_literal(text: str, choices: tuple[Any, ...], key: str) -> Any:
    """The choice of a ``Literal[...]`` that ``text`` parses to."""
    for c in choices:
        try:
            if coerce(text, type(c), key) == c:
                return c
        except ConfigError:
            pass
    raise invalid(key, f"must be one of {', '.join(map(str, choices))}, got {text!r}")


def _coerce_dict(text: str, key: str) -> dict:
    """``text`` as a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise invalid(key, f"expects a JSON object, got {text!r}")
    return value


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
        values = [coerce(p, item, key) for p in parts]
    else:
        if len(parts) != len(args):
            raise invalid(key, f"expects {len(args)} comma-separated values, got {text!r}")
        values = [coerce(p, a, key) for p, a in zip(parts, args)]
    return tuple(values) if origin is tuple else values


def coerce(text: str, tp: Any, key: str) -> Any:
    """Parse the command-line string ``text`` as a value of the annotation ``tp``: bool (true/false/1/0/yes/no/
    on/off), int (also ``1e4``), float, str, Path, unions (``none``/``null`` for None), Literal, ``tuple[...]`` /
    ``list[...]`` (comma-separated, optional brackets), dict (JSON) or Any (the text). ConfigError naming ``key``
    when the text does not parse."""
    if tp is Any:
        return text
    arms = _union_args(tp)
    if arms is not None:
        return _coerce_union(text, arms, key)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return _coerce_literal(text, typing.get_args(tp), key)
    if origin in (tuple, list):
        return _coerce_sequence(text, tp, key)
    if origin is dict or tp is dict:
        return _coerce_dict(text, key)
    parse = _PARSERS.get(tp) if isinstance(tp, type) else None
    if parse is None:
        raise invalid(key, f"has type {_type_name(tp)}, which cannot be set from a string")
    return parse(text, key)


# ------------------------------------------------------------------------------ checks: typed values
def _check_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise invalid(key, f"expects a bool, got {value!r}")


def _check_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise invalid(key, f"expects an int, got {value!r}")


def _check_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise invalid(key, f"expects a float, got {value!r}")


def _check_path(value: Any, key: str) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise invalid(key, f"expects a path, got {value!r}")


#: how a typed value of a field of each scalar type is checked: ``check(value, key) -> value`` (other classes:
#: an instance of the class)
_CHECKERS: dict[type, Callable[[Any, str], Any]] = {
    bool: _check_bool, int: _check_int, float: _check_float, Path: _check_path,
}


def _check_union(value: Any, arms: tuple[Any, ...], key: str) -> Any:
    """``value`` checked against the first arm of a union it fits."""
    if value is None and type(None) in arms:
        return None
    for arm in arms:
        if arm is type(None):
            continue
        try:
            return check_value(value, arm, key)
        except ConfigError:
            pass
    raise invalid(key, f"expects {' or '.join(_type_name(a) for a in arms)}, got {value!r}")


def _check_literal(value: Any, choices: tuple[Any, ...], key: str) -> Any:
    if value in choices:
        return value
    raise invalid(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _check_sequence(value: Any, tp: Any, key: str) -> Any:
    """A tuple or list ``value`` with its items checked against a ``tuple[...]`` / ``list[...]`` annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (tuple, list)):
        raise invalid(key, f"expects a {origin.__name__}, got {value!r}")
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        item = args[0] if args else Any
        items = [check_value(v, item, key) for v in value]
    else:
        if args and len(value) != len(args):
            raise invalid(key, f"expects {len(args)} values, got {value!r}")
        items = [check_value(v, a, key) for v, a in zip(value, args)] if args else list(value)
    return tuple(items) if origin is tuple else items


def _check_dict(value: Any, key: str) -> dict:
    if isinstance(value, dict):
        return value
    raise invalid(key, f"expects a dict, got {value!r}")


def _check_instance(value: Any, tp: type, key: str) -> Any:
    if isinstance(value, tp):
        return value
    raise invalid(key, f"expects {tp.__name__}, got {value!r}")


def check_value(value: Any, tp: Any, key: str) -> Any:
    """Check an already-typed ``value`` against the annotation ``tp`` and lightly normalise it (int -> float,
    list <-> tuple as annotated, str -> Path); ConfigError naming ``key`` when it does not fit."""
    if tp is Any:
        return value
    arms = _union_args(tp)
    if arms is not None:
        return _check_union(value, arms, key)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return _check_literal(value, typing.get_args(tp), key)
    if origin in (tuple, list):
        return _check_sequence(value, tp, key)
    if origin is dict or tp is dict:
        return _check_dict(value, key)
    if not isinstance(tp, type):
        return value
    check = _CHECKERS.get(tp)
    return check(value, key) if check is not None else _check_instance(value, tp, key)


def check_types(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its annotation (ints are accepted for floats and
    converted); ConfigError naming the field otherwise. Call it first in ``__post_init__``."""
    for f in dataclasses.fields(obj):
        tp = type_hints(type(obj))[f.name]
        value = getattr(obj, f.name)
        if is_dataclass_type(tp):
            if not isinstance(value, tp):
                raise invalid(f.name, f"expects a {tp.__name__}, got {value!r}")
            continue
        checked = check_value(value, tp, f.name)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def validate(obj: T) -> T:
    """Re-run the type checks and ``__post_init__`` hooks of ``obj`` and every dataclass nested in it, e.g.
    after fields were assigned directly. Returns a fresh, validated copy."""
    return _rebuild(obj, _Node(), "")


# ---------------------------------------------------------------------------------------------- overrides
def parse_override(item: str) -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; ConfigError unless the item has the form key=value."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must have the form key=value (e.g. train.lr=1e-4)")
    return key, value.strip()


class _Node(dict):
    """A section of an override tree: field name -> the value set there, or a ``_Node`` for a nested section (a
    plain dict is a value: the whole of a dict field)."""


@dataclasses.dataclass(frozen=True)
class _Text:
    """A leaf of an override tree given as command-line text: coerced to its field's annotation when applied."""

    text: str


def _tree(items: Iterable[tuple[str, Any]]) -> _Node:
    """Dotted ``(key, value)`` pairs nested by field name; a later value of the same key wins."""
    tree = _Node()
    for key, value in items:
        parts = key.split(".")
        node = tree
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if not isinstance(nxt, _Node):
                if part in node:
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is set as a value and used as a section "
                                      f"in {key!r}")
                nxt = node[part] = _Node()
            node = nxt
        if isinstance(node.get(parts[-1]), _Node):
            raise ConfigError(f"{key} is a section, not a value")
        node[parts[-1]] = value
    return tree


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.init]


def _check_known(tree: Mapping[str, Any], names: list[str], prefix: str) -> None:
    """ConfigError naming the first key of ``tree`` that is not one of the field ``names``, and the valid keys."""
    for name in tree:
        if name not in names:
            raise ConfigError(f"unknown config key {prefix + name!r}; valid keys: "
                              + ", ".join(prefix + n for n in names))


def _section(node: Any, name: str) -> Any:
    """The nested dataclass at field ``name`` of ``node`` (an instance, or a dataclass type), else None."""
    if isinstance(node, type):
        tp = type_hints(node)[name]
        return tp if is_dataclass_type(tp) else None
    value = getattr(node, name)
    return value if _is_instance(value) else None


def _schema(node: Any, name: str) -> type | None:
    """The dataclass whose fields the dict field ``name`` of the instance ``node`` holds (its metadata's
    ``schema``, see :func:`meta`), else None."""
    if isinstance(node, type):
        return None
    schema = next(f for f in dataclasses.fields(node) if f.name == name).metadata.get("schema")
    return schema(node) if schema is not None else None


def _section_error(key: str, section: Any) -> ConfigError:
    return ConfigError(f"{key} is a section, not a value; set one of its keys, e.g. "
                       f"{key}.{_field_names(section)[0]}=...")


def _value_error(key: str, sub: Mapping[str, Any]) -> ConfigError:
    return ConfigError(f"unknown config key {key + '.' + next(iter(sub))!r}: {key} is a value, not a section")


def _qualify(e: ConfigError, prefix: str) -> ConfigError:
    if not prefix:
        return e
    if hasattr(e, "key") and hasattr(e, "detail"):
        return invalid(prefix + e.key, e.detail)
    return ConfigError(f"{prefix.rstrip('.')}: {e}")


def _coerce_tree(node: Any, tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{dotted key: typed value}`` of the text leaves of ``tree``, coerced by the annotations of ``node`` (a
    dataclass instance or type), section by section in field order."""
    names = _field_names(node)
    _check_known(tree, names, prefix)
    hints = type_hints(node if isinstance(node, type) else type(node))
    out: dict[str, Any] = {}
    for name in names:
        if name in tree:
            out.update(_coerce_field(node, name, hints[name], tree[name], prefix + name))
    return out


def _coerce_field(node: Any, name: str, tp: Any, sub: Any, key: str) -> dict[str, Any]:
    """:func:`_coerce_tree` for field ``name`` (annotation ``tp``, dotted ``key``) set to ``sub``."""
    section = _section(node, name)
    if section is not None:
        if not isinstance(sub, _Node):
            raise _section_error(key, section)
        return _coerce_tree(section, sub, key + ".")
    if not isinstance(sub, _Node):
        return {key: coerce(sub, tp, key)}
    schema = _schema(node, name)
    if schema is None:
        raise _value_error(key, sub)
    return _coerce_tree(schema, sub, key + ".")


def _rebuild(obj: Any, tree: Mapping[str, Any], prefix: str) -> Any:
    """Copy of dataclass ``obj`` with the values of ``tree`` applied (typed values checked, :class:`_Text`
    coerced), every nested section rebuilt and every ``__post_init__`` re-run, section by section in field order;
    ConfigError qualified with the section's ``prefix``."""
    names = _field_names(obj)
    _check_known(tree, names, prefix)
    hints = type_hints(type(obj))
    changes: dict[str, Any] = {}
    for name in names:
        if name in tree:
            changes[name] = _apply_field(obj, name, hints[name], tree[name], prefix + name)
        elif _is_instance(getattr(obj, name)):
            changes[name] = _rebuild(getattr(obj, name), _Node(), prefix + name + ".")
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        raise _qualify(e, prefix) from None


def _apply_field(obj: Any, name: str, tp: Any, sub: Any, key: str) -> Any:
    """The new value of field ``name`` of ``obj`` (annotation ``tp``, dotted ``key``) given ``sub``: a typed value,
    command-line text (:class:`_Text`), or a subtree of them (a nested section, or the fields of a dict field with
    a schema)."""
    section = _section(obj, name)
    if section is not None:
        if isinstance(sub, type(section)):  # a whole section, as an instance of its type
            return _rebuild(sub, _Node(), key + ".")
        if not isinstance(sub, _Node):
            raise _section_error(key, section)
        return _rebuild(section, sub, key + ".")
    if isinstance(sub, _Text):
        return coerce(sub.text, tp, key)
    if not isinstance(sub, _Node):
        return check_value(sub, tp, key)
    schema = _schema(obj, name)
    if schema is None:
        raise _value_error(key, sub)
    return _apply_schema(getattr(obj, name), schema, sub, key)


def _apply_schema(value: Any, schema: type, sub: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The dict ``value`` of a field holding the fields of dataclass ``schema``, with the values of ``sub``
    written in: checked by building ``schema`` from the dict and applying ``sub`` to it; the keys the dict held
    stay, the keys set are added, all as JSON values (the form a run's ``config.json`` saves)."""
    value = dict(value or {})
    updated = to_jsonable(_rebuild(from_dict(schema, value, prefix=key + "."), sub, key + "."))
    return {**value, **{name: updated[name] for name in sub}}


def override_values(obj: Any, overrides: Iterable[str]) -> dict[str, Any]:
    """The typed values of ``key=value`` overrides, ``{dotted key: value}``, each coerced (:func:`coerce`) to the
    annotation of the field its key names in the dataclass ``obj``, as :func:`apply_overrides` coerces them;
    nothing is applied (:func:`apply_values` applies the result). A later override of the same key wins.
    ConfigError naming the key on a malformed item, an unknown key, a key of a section, or a value that does not
    parse."""
    return _coerce_tree(obj, _tree(parse_override(item) for item in overrides), "")


def apply_values(obj: T, values: Mapping[str, Any]) -> T:
    """Copy of the dataclass ``obj`` with typed ``values`` set at dotted keys (``{"sampler.n_steps": 10}``):
    each checked against its field's annotation (:func:`check_value`), every section rebuilt and validated by its
    ``__post_init__``. A key under a dict field whose metadata names a ``schema`` (:func:`meta`) sets one field
    of the dict, e.g. ``model.config.nf``: the dict is checked by building the schema's dataclass from it.
    ConfigError naming the key on an unknown key, a section given a value, a value of the wrong type, or a value
    a ``__post_init__`` rejects. ``obj`` is not modified. :func:`apply_overrides` is the same with text values."""
    return _rebuild(obj, _tree(values.items()), "")


def apply_overrides(obj: T, overrides: Iterable[str]) -> T:
    """Apply ``key=value`` overrides (dotted keys for nested dataclasses, e.g. ``train.lr=1e-4``) to the
    dataclass ``obj``; returns a new, validated object (``obj`` is not modified).

    Values are coerced from the field annotation: bool (true/false/1/0/yes/no/on/off), int (also ``1e4``),
    float, str, Path, ``X | None`` (``none``/``null``), Literal, ``tuple[...]``/``list[...]``
    (comma-separated, optional brackets) and dict (JSON). A later override of the same key wins. Keys under a dict
    field with a ``schema`` are the fields of that dataclass (``model.config.nf=64``). Raises ConfigError naming
    the key on a malformed item, an unknown key, a value of the wrong type, or a value the dataclass's
    ``__post_init__`` rejects. The same path as :func:`apply_values`, each text coerced where it is applied (so
    errors come section by section, in field order).
    """
    pairs = (parse_override(item) for item in overrides)
    return _rebuild(obj, _tree((key, _Text(text)) for key, text in pairs), "")


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (JSON-loaded) dict; nested dataclasses from nested dicts, lists become
    tuples where annotated. Unknown keys and wrongly typed values raise ConfigError naming the key; missing
    keys take the field's default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = type_hints(cls)
    names = _field_names(cls)
    _check_known(data, names, prefix)
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, value, prefix=prefix + key + ".")
        else:
            kwargs[key] = check_value(value, tp, prefix + key)
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
