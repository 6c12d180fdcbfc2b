"""What the trainer (:func:`lcssm.training.loop.train`) writes about a run: rank 0's ``loss.csv``, ``metrics.jsonl`` and
TensorBoard files (:class:`TrainLogs`), the diagnostics of a non-finite step (:func:`diagnose`), the window
means of the periodic records and the tqdm bar."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor

from lcssm.files import atomic_write_text

__all__ = ["TrainLogs", "diagnose", "progress_bar", "window_mean"]


def _finite_or_str(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _jsonable_record(rec: dict) -> dict:
    return {k: _finite_or_str(v) if isinstance(v, float) else v for k, v in rec.items()}


def diagnose(per_sample: Tensor, diag: dict[str, Tensor], limit: int = 8) -> dict[str, Any]:
    """Where a non-finite loss came from: the bad samples' indices and their diagnostics (e.g. t, sigma,
    loss terms), plus each diagnostic's range over the batch."""
    ps = per_sample.detach().float().reshape(-1)
    bad = (~torch.isfinite(ps)).nonzero().reshape(-1)
    out: dict[str, Any] = {"n_samples": ps.numel(), "n_nonfinite_samples": int(bad.numel()),
                           "nonfinite_indices": bad[:limit].tolist()}
    for name, value in diag.items():
        if not isinstance(value, Tensor):
            continue
        v = value.detach().float().reshape(-1).cpu()
        entry: dict[str, Any] = {}
        if v.numel():
            fin = v[torch.isfinite(v)]
            entry["min"] = _finite_or_str(float(fin.min())) if fin.numel() else "nan"
            entry["max"] = _finite_or_str(float(fin.max())) if fin.numel() else "nan"
            entry["n_nonfinite"] = int(v.numel() - fin.numel())
        if v.numel() == ps.numel() and bad.numel():
            entry["at_nonfinite"] = [_finite_or_str(float(x)) for x in v[bad[:limit].cpu()]]
        out[name] = entry
    return out


class TrainLogs:
    """Rank 0's files: loss.csv (every step), metrics.jsonl (every log_every steps and events), TensorBoard."""

    def __init__(self, out: Path, start_step: int, losses: list[float], enabled: bool) -> None:
        self.enabled = enabled
        self.loss_csv: TextIO | None = None
        self.metrics: TextIO | None = None
        self.tb = None
        if not enabled:
            return
        atomic_write_text(out / "loss.csv", "step,loss\n" + "".join(f"{i + 1},{v!r}\n" for i, v in enumerate(losses)))
        kept = []
        metrics_path = out / "metrics.jsonl"
        if start_step and metrics_path.exists():
            for line in metrics_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by a crash
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= start_step:
                    kept.append(line + "\n")
        atomic_write_text(metrics_path, "".join(kept))
        self.loss_csv = open(out / "loss.csv", "a")  # noqa: SIM115 - closed in close()
        self.metrics = open(metrics_path, "a")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)

    def loss(self, step: int, value: float) -> None:
        if self.loss_csv is not None:
            self.loss_csv.write(f"{step},{value!r}\n")

    def record(self, rec: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(_jsonable_record(rec)) + "\n")
            self.metrics.flush()
        if self.tb is not None and "event" not in rec:
            for key in ("loss", "grad_norm", "lr", "samples_per_s"):
                if isinstance(rec.get(key), float):
                    self.tb.add_scalar(f"train/{key}", rec[key], rec["step"])

    def flush(self) -> None:
        for f in (self.loss_csv, self.metrics):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self.loss_csv, self.metrics):
            if f is not None and not f.closed:
                f.close()
        if self.tb is not None:
            self.tb.close()


def window_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (nan when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar over steps ``initial..total``, or None when disabled or there is nothing left to do."""
    if not enabled or initial >= total:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm hides itself when stderr is not a terminal
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=None)
