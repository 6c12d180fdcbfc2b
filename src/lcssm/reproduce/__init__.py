"""Reproduction targets: each regenerates one of the paper's tables or figures (or a check the paper did not
make) and writes a Markdown report with its tables, PNG figures and the command that made it.

``run_target("table2", "out/table2", size="quick")`` or, from the shell, ``lcssm reproduce table2 --out
out/table2 --quick``. Sizes: ``smoke`` (seconds; exercises every code path, numbers meaningless), ``quick``
(a few minutes per target on 2 CPU cores) and ``full`` (the fuller setting). ``run_all`` runs every target
into sub-folders and writes an index with the time each took.

Each target module exposes ``run(ctx: Context) -> Report``; the registry below maps names to modules, which
are imported only when run.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from lcssm.device import resolve_device
from lcssm.errors import ConfigError, LcssmError
from lcssm.reproduce.report import Report, Table, command_line, format_cell

__all__ = [
    "SIZE_NAMES",
    "TARGETS",
    "Context",
    "Target",
    "TargetUnavailable",
    "run_all",
    "run_target",
]

SIZE_NAMES = ("smoke", "quick", "full")
T = TypeVar("T")


class TargetUnavailable(LcssmError):
    """A target whose prerequisites (e.g. a pipeline still being built) are missing from this installation."""


def require_digits(target: str) -> None:
    """TargetUnavailable naming what is missing unless the digits (scikit-learn's) and their classifier load."""
    from lcssm.errors import DataError

    try:
        from lcssm.data.digits import load_digits
        from lcssm.metrics.features import digits_features  # noqa: F401 - the digits-FID needs it

        load_digits("test")  # needs scikit-learn
    except ImportError as e:
        raise TargetUnavailable(f"{target} needs the digits pipeline pieces ({e})") from e
    except DataError as e:
        raise TargetUnavailable(f"{target} needs the digits data ({e})") from e


@dataclass(frozen=True)
class Target:
    name: str
    module: str
    description: str

    def runner(self) -> Callable[[Context], Report]:
        return importlib.import_module(f"lcssm.reproduce.{self.module}").run


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("table1", "table1", "checkerboard density estimation, SSM / FD-SSM / DSM / LCSS (paper Table 1, "
               "App. B): learned densities, energy distance, in-support fraction, score error"),
        Target("fig8", "fig8", "training-loss curves of the table1 runs on one figure (paper Fig. 8)"),
        Target("table2", "table2", "ms per training step of exact SM, SSM, SSM-VR, FD-SSM, DSM, LCSS on the "
               "checkerboard MLP and an NCSNv2 network (paper Table 2)"),
        Target("fig7", "fig7", "LCSS gamma ablation (0.5, 1, 2, 10) on digits: sample grids, BPD (paper Fig. 7)"),
        Target("digits", "digits", "LCSS, DSM, SSM-VR and FD-SSM on the digits image preset: s/step, test bits/dim, "
               "digits-FID/KID of PC and ODE samples, sample grids (docs/DIGITS.md)"),
        Target("table3", "table3", "LCSS, DSM, SSM-VR and FD-SSM on the mnist preset (MNIST-5k): real-Inception "
               "FID (tf convention) vs the held-out split with its floor, test bits/dim, s/step (paper Table 3)"),
        Target("samplers", "samplers", "digits-FID against NFE for every fixed-grid solver (NFE 10-200), PC and "
               "the adaptive ODE on one LCSS run of the digits preset, with the plot"),
        Target("points", "points", "point diffusion with the default `lcssm train` on six 2-D datasets for every "
               "objective and SDE: k-NN precision / recall, density / coverage, histogram TV, each with its floor"),
        Target("tails", "tails", "heavy-tailed 2-D data and a Gaussian control: VP against the non-affine tanh "
               "and Student-t SDEs at equal steps; bulk precision / recall, tail quantiles and KS, held-out NLL"),
        Target("equivalence", "equivalence", "LCSS vs DSM: loss identity and gradient difference for VE / VP / "
               "subVP and centers marginal / data; the data-center bias"),
        Target("variance", "variance", "gradient variance of each objective as sigma shrinks; score error "
               "against a known score at equal wall time"),
    ]
}


@dataclass
class Context:
    """What a target needs to run: where to write, how big, the seed, the device, and the command line to
    print. ``cache`` is shared by the targets of one ``run_all`` (fig8 reuses table1's runs)."""

    out_dir: Path
    size: str = "quick"
    seed: int = 0
    command: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.size not in SIZE_NAMES:
            raise ConfigError(f"unknown size {self.size!r}; valid: {', '.join(SIZE_NAMES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        self.out_dir = Path(self.out_dir)
        self.device = resolve_device(self.device)

    def pick(self, options: dict[str, T]) -> T:
        """The value for this context's size from ``{"smoke": ..., "quick": ..., "full": ...}``."""
        return options[self.size]

    def report(self, target: str, title: str, settings: dict[str, Any] | None = None) -> Report:
        return Report(target=target, title=title, out_dir=self.out_dir, seed=self.seed, command=self.command,
                      size=self.size, device=str(self.device), settings=dict(settings or {}), started=self.started)


def _check_name(name: str) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"unknown reproduction target {name!r}; valid: {', '.join(TARGETS)}, all")
    return TARGETS[name]


def run_target(
    name: str,
    out_dir: str | Path,
    *,
    size: str = "quick",
    seed: int = 0,
    device: str | torch.device = "cpu",
    command: str | None = None,
    progress: bool = False,
    cache: dict[str, Any] | None = None,
) -> Report:
    """Run one target and write its report into ``out_dir``; returns the written :class:`Report`."""
    target = _check_name(name)
    ctx = Context(out_dir=Path(out_dir), size=size, seed=seed, command=command or command_line(), device=device,
                  progress=progress, cache=cache if cache is not None else {})
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    report = target.runner()(ctx)
    report.write()
    return report


def run_all(
    out_dir: str | Path,
    *,
    size: str = "quick",
    seed: int = 0,
    device: str | torch.device = "cpu",
    command: str | None = None,
    progress: bool = False,
    names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every target (or ``names``) into ``out_dir/NAME``; a failing or unavailable target is recorded and
    the others still run. Writes ``out_dir/README.md`` (status and seconds per target); returns that data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = command or command_line()
    cache: dict[str, Any] = {}
    status: dict[str, dict[str, Any]] = {}
    for name in names or list(TARGETS):
        _check_name(name)
        log(f"[reproduce] {name} ...")
        t0 = time.perf_counter()
        try:
            run_target(name, out / name, size=size, seed=seed, device=device, command=command,
                       progress=progress, cache=cache)
            state = "ok"
        except TargetUnavailable as e:
            state = f"unavailable: {e}"
        except Exception as e:  # noqa: BLE001 - one broken target must not hide the others' results
            state = f"failed: {type(e).__name__}: {e}"
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "ERROR.txt").write_text(traceback.format_exc())
        seconds = time.perf_counter() - t0
        status[name] = {"status": state, "seconds": seconds}
        log(f"[reproduce] {name}: {state} ({seconds:.1f} s)")
    table = Table(["target", "status", "seconds", "report"],
                  [[n, s["status"], round(s["seconds"], 1),
                    f"[{n}/REPORT.md]({n}/REPORT.md)" if s["status"] == "ok" else "-"]
                   for n, s in status.items()])
    (out / "README.md").write_text(
        f"# lcssm reproduction ({size})\n\n- command: `{command}`\n- seed: {seed}\n\n{table.markdown()}\n\n"
        f"Total: {format_cell(sum(s['seconds'] for s in status.values()))} s\n")
    return status
