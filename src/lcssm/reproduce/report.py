"""Markdown reports for the reproduction targets: tables, figures, and the facts that make a number
regenerable (machine, library versions, thread count, seed, the exact command line).

A :class:`Report` collects blocks in order and writes ``REPORT.md`` plus ``results.json`` (every table as
data, the machine info and the settings) into its directory. Cells are formatted by :func:`format_cell`;
:meth:`Report.problems` lists every cell that is NaN, None or empty, which the tests require to be none.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lcssm.device import cpu_model

__all__ = ["Report", "Table", "format_cell", "machine_info", "command_line"]


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a shell-quoted line (``lcssm ...`` when run through the entry point)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("lcssm", "__main__.py"):
        argv[0] = "lcssm"
    return " ".join(shlex.quote(a) for a in argv)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads, library versions, accelerator, and the git commit when available."""
    device = torch.device(device)
    import numpy as np

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    commit = _git_commit()
    if commit:
        info["git_commit"] = commit
    from lcssm import __version__

    info["lcssm"] = __version__
    return info


def format_cell(value: Any) -> str:
    """Four significant digits for floats (scientific below 1e-3 or from 1e5), ints as they are, strings as
    given; NaN and None come out as ``NaN`` / ``None`` so that :meth:`Report.problems` can see them."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


@dataclass
class Table:
    """A Markdown table: ``rows`` are lists of cells (numbers or strings), one per header."""

    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"row {row!r} has {len(row)} cells, the table {len(self.headers)} columns")

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(h) for h in self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(esc(format_cell(c)) for c in row) + " |" for row in self.rows]
        return ("\n".join(lines) + ("\n\n" + self.caption if self.caption else "")).rstrip()

    def as_dict(self) -> dict[str, Any]:
        return {"headers": self.headers, "rows": [[_jsonable(c) for c in r] for r in self.rows],
                "caption": self.caption}


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


@dataclass
class Report:
    """One target's report. Add blocks in reading order, then :meth:`write`.

    ``settings`` are the target's knobs (steps, batch sizes, ...) and are printed in the header;
    ``results`` is free-form data that goes to results.json only (e.g. curves for later plotting).
    """

    target: str
    title: str
    out_dir: Path
    seed: int
    command: str
    size: str
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    tables: dict[str, Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------------- blocks
    def section(self, heading: str) -> None:
        self.blocks.append(("section", heading))

    def text(self, markdown: str) -> None:
        self.blocks.append(("text", markdown.strip()))

    def table(self, key: str, table: Table) -> Table:
        """Add a table; ``key`` names it in results.json (and must be unique)."""
        if key in self.tables:
            raise ValueError(f"table {key!r} added twice")
        self.tables[key] = table
        self.blocks.append(("table", table))
        return table

    def figure(self, path: str | Path, caption: str) -> None:
        """Reference a PNG already written into (a sub-folder of) the report directory."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"figure {p} was not written")
        rel = os.path.relpath(p, self.out_dir)
        self.blocks.append(("figure", (rel, caption)))

    # ---------------------------------------------------------------------------------------- checks
    def problems(self) -> list[str]:
        """Every table cell that is NaN, None or empty, and every table without rows."""
        bad = []
        for key, t in self.tables.items():
            if not t.rows:
                bad.append(f"{key}: no rows")
            for i, row in enumerate(t.rows):
                for h, c in zip(t.headers, row):
                    s = format_cell(c)
                    if s in ("NaN", "None", "") or s.strip() == "":
                        bad.append(f"{key}[{i}].{h} = {s!r}")
        return bad

    # ------------------------------------------------------------------------------------------ write
    def header(self) -> str:
        info = machine_info(self.device)
        lines = [
            f"# {self.title}",
            "",
            f"- command: `{self.command}`",
            f"- target: `{self.target}`, size: `{self.size}`, seed: {self.seed}",
            f"- machine: {info['cpu']}, {info['logical_cores']} logical cores, torch threads "
            f"{info['torch_threads']}, device {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else ""),
            f"- software: torch {info['torch']}, numpy {info['numpy']}, python {info['python']}, "
            f"lcssm {info['lcssm']}" + (f", commit {info['git_commit']}" if "git_commit" in info else ""),
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(self.started))}, "
            f"wall time {time.time() - self.started:.1f} s"
            + (f", 1-min load average at the end {info['load_average_1min']}" if "load_average_1min" in info
               else ""),
        ]
        if self.settings:
            lines.append("- settings: " + ", ".join(f"{k} = {format_cell(v)}" for k, v in self.settings.items()))
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [self.header()]
        for kind, payload in self.blocks:
            if kind == "section":
                parts.append(f"## {payload}")
            elif kind == "text":
                parts.append(payload)
            elif kind == "table":
                parts.append(payload.markdown())
            elif kind == "figure":
                rel, caption = payload
                parts.append(f"![{caption}]({rel})\n\n*{caption}*")
        return "\n\n".join(parts) + "\n"

    def write(self) -> Path:
        """Write REPORT.md and results.json; returns the path of REPORT.md."""
        md = self.out_dir / "REPORT.md"
        md.write_text(self.markdown())
        payload = {
            "target": self.target,
            "title": self.title,
            "command": self.command,
            "seed": self.seed,
            "size": self.size,
            "seconds": time.time() - self.started,
            "machine": machine_info(self.device),
            "settings": {k: _jsonable(v) for k, v in self.settings.items()},
            "tables": {k: t.as_dict() for k, t in self.tables.items()},
            "results": self.results,
        }
        (self.out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        return md
