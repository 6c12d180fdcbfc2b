"""Reading a finished run instead of training it again: a target whose run directory already holds a run of the
same spec takes its records, so an interrupted target resumes where it stopped and runs can be trained beforehand
(in parallel) with the ``lcssm train`` command the target would run (:func:`ensure_trained`, the way digits, points,
fig7, samplers and table3 train); and reading a kept measurement (a table row) of the same request instead of
measuring it again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lcssm.training.loop import NonFiniteLossError


def finished_records(run_dir: Path, spec, kinds: tuple[str, ...] = ("train",)) -> dict[str, Any] | None:
    """The last record of each of ``kinds`` in ``run_dir/metrics.json`` when the directory holds a finished run of
    ``spec`` (its ``config.json`` equal to ``spec`` resolved as training stores it); None when it holds none, when
    a kind has no record, or when its ``config.json`` is another spec."""
    from lcssm.files import read_metrics

    if not holds_spec(run_dir, spec):
        return None
    metrics = read_metrics(run_dir)
    if not all(metrics.get(kind) for kind in kinds):
        return None
    return {kind: metrics[kind][-1] for kind in kinds}


def holds_spec(run_dir: Path, spec) -> bool:
    """Whether ``run_dir/config.json`` is ``spec`` resolved as training stores it (a run of it, finished or
    stopped: a stopped one resumes from its newest checkpoint with ``train_run(..., resume=True)``)."""
    from lcssm.experiments.pipeline import resolved_spec
    from lcssm.experiments.spec import load_spec

    config = run_dir / "config.json"
    if not config.is_file():
        return False
    return load_spec(json.loads(config.read_text()), str(config)).to_dict() == resolved_spec(spec).to_dict()


def cached_record(path: Path, request: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> tuple[dict, bool]:
    """The record kept in the JSON file ``path`` when it was made for an equal ``request`` (compared as JSON), else
    ``compute()``'s, kept there atomically with its request; and whether it was read. A request must hold
    everything the record depends on (the run's resolved spec, sizes, seed): a seeded computation of the same request
    gives the same numbers, so a kept record stays valid even when its run directory was retrained or removed. A
    run spec in a request (``request["spec"]``) is compared as this lcssm reads it, so a record kept before the spec
    gained a field (at its default) is still read."""
    from lcssm.config import to_jsonable
    from lcssm.files import atomic_write_text

    request = json.loads(json.dumps(to_jsonable(request)))
    if path.is_file():
        kept = json.loads(path.read_text())
        if _as_read(kept.get("request")) == _as_read(request):
            return kept["record"], True
    record = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(to_jsonable({"request": request, "record": record}), indent=1))
    return record, False


def _as_read(request: Any) -> Any:
    """``request`` with its run spec, if it holds one, as :func:`~lcssm.experiments.spec.load_spec` reads it."""
    from lcssm.errors import ConfigError
    from lcssm.experiments.spec import load_spec

    if not isinstance(request, dict) or not isinstance(request.get("spec"), dict):
        return request
    try:
        return {**request, "spec": load_spec(request["spec"], "a kept request").to_dict()}
    except ConfigError:
        return request


def train_or_resume(spec, run_dir: Path, *, progress: bool, label: str) -> dict[str, Any]:
    """``train_run`` of ``spec`` into ``run_dir``: resumed from its newest checkpoint when the directory holds a run
    of the same spec (stopped by Ctrl-C or SIGTERM, or finished without its records), else trained afresh over
    whatever it holds. A signal stops it with a message saying that the same command resumes ``label``."""
    from lcssm.experiments.pipeline import train_run
    from lcssm.training.stop import TrainingInterrupted

    resume = holds_spec(run_dir, spec)
    try:
        return train_run(spec, run_dir, resume=resume, overwrite=not resume, progress=progress)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{label}: stopped by a signal after step {e.step}; checkpoint {e.checkpoint}; the "
                                  "same command again resumes its training from there", signum=e.signum, step=e.step,
                                  checkpoint=e.checkpoint) from None


@dataclass(frozen=True)
class Trained:
    """What :func:`ensure_trained` found or made: the run's ``records`` (the last of each kind, as
    :func:`finished_records` or ``train_run`` return them; empty when it diverged), whether they were ``reused``
    from a finished run, the ``NonFiniteLossError`` that stopped its training (None unless it ``diverged``) and the
    wall ``seconds`` spent training (0 when reused)."""

    records: dict[str, Any] = field(default_factory=dict)
    reused: bool = False
    diverged: NonFiniteLossError | None = None
    seconds: float = 0.0

    @property
    def diverged_note(self) -> str:
        """``"diverged at step N"``: how a target's row reports a diverged run."""
        return f"diverged at step {self.diverged.step}" if self.diverged is not None else ""


def ensure_trained(spec, run_dir: Path, *, progress: bool, label: str,
                   kinds: tuple[str, ...] = ("train",)) -> Trained:
    """The records of the run of ``spec`` in ``run_dir``: read when the directory holds a finished run of it (its
    :func:`finished_records` of ``kinds``; no model is built and nothing is written), else made by
    :func:`train_or_resume` (resumed from the newest checkpoint of a stopped run of the same spec, trained afresh
    otherwise). A training stopped by a non-finite loss is returned as ``diverged``, not raised."""
    from lcssm.training.loop import NonFiniteLossError

    done = finished_records(run_dir, spec, kinds)
    if done is not None:
        return Trained(records=done, reused=True)
    began = time.perf_counter()
    try:
        records = train_or_resume(spec, run_dir, progress=progress, label=label)
    except NonFiniteLossError as e:
        return Trained(diverged=e, seconds=time.perf_counter() - began)
    return Trained(records=records, seconds=time.perf_counter() - began)
