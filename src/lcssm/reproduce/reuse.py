"""Reading a finished run instead of training it again: a target whose run directory already holds a run of the
same spec takes its records, so an interrupted target resumes where it stopped and runs can be trained beforehand
(in parallel) with the ``lcssm train`` command the target would run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finished_records(run_dir: Path, spec, kinds: tuple[str, ...] = ("train",)) -> dict[str, Any] | None:
    """The last record of each of ``kinds`` in ``run_dir/metrics.json`` when the directory holds a finished run of
    ``spec`` (its ``config.json`` equal to ``spec`` resolved as training stores it); None when it holds none, when
    a kind has no record, or when its ``config.json`` is another spec."""
    from lcssm.experiments.pipeline import resolved_spec
    from lcssm.experiments.spec import load_spec
    from lcssm.files import read_metrics

    config = run_dir / "config.json"
    if not config.is_file():
        return None
    metrics = read_metrics(run_dir)
    if not all(metrics.get(kind) for kind in kinds):
        return None
    if load_spec(json.loads(config.read_text()), str(config)).to_dict() != resolved_spec(spec).to_dict():
        return None
    return {kind: metrics[kind][-1] for kind in kinds}
