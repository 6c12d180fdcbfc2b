"""Stopping a training run without losing it: signals (SIGINT, SIGTERM, SIGUSR1) and running out of memory.

A signal does not stop the step in progress: :class:`StopRequests` records it, the trainer finishes the step,
agrees with every rank on stopping (the flag travels in the step's all-reduce), writes a checkpoint and raises
:class:`TrainingInterrupted`, whose exit code is 128 + the signal's number (130 for SIGINT; SIGUSR1, what SLURM and
Kubernetes send before a kill, counts as SIGTERM: 143). A second SIGINT stops at once, without a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from lcssm.errors import LcssmError

__all__ = ["StopRequests", "TrainingInterrupted"]

_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None)


class TrainingInterrupted(LcssmError):
    """Training stopped by a signal after a checkpoint was written; :attr:`exit_code` is 130 or 143."""

    def __init__(self, message: str, *, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 130 if signum == signal.SIGINT else 143


class StopRequests:
    """Context manager that turns SIGINT / SIGTERM / SIGUSR1 into a request to stop after the current step
    (:attr:`signum`, 0 while none came). Installed only in the main thread; the previous handlers come back on
    exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
