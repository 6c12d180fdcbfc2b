"""Files a crash never leaves half-written, and the ``metrics.json`` log of a run directory.

Every file lcssm writes for later use goes to a temporary name beside its destination, is fsync'ed and then
renamed over it (atomic on POSIX): a reader sees the old file or the new one, never a mixture.

``metrics.json`` holds one list per kind of evaluation (``"train"``, ``"sample"``, ``"bpd"``, ``"fid"``), each
call appending a record, so repeated evaluations of a run (other samplers, seeds, checkpoints) are all kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from lcssm.config import to_jsonable

METRICS_FILE = "metrics.json"


def temporary_path(path: str | os.PathLike) -> Path:
    """Where a file for ``path`` is written before it is renamed into place: a hidden name beside it, unique to
    this host and process (``.NAME.HOST-PID.tmp``), so concurrent writers, also on a shared file system, never
    share one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def replace_synced(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync the finished file ``tmp``, then rename it over ``path`` (for files written by other means)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, rename."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """``numpy.save`` of ``array`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` of ``arrays`` to exactly ``path`` (no ``.npz`` appended), atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


RUN_MARKER = ".lcssm-run"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether lcssm wrote the directory ``path``: it holds the marker, or (a run written before the marker
    existed) a ``config.json`` beside a ``checkpoints/`` folder."""
    path = Path(path)
    return (path / RUN_MARKER).is_file() or ((path / "config.json").is_file() and (path / "checkpoints").is_dir())


def check_run_dir(path: str | os.PathLike) -> Path:
    """``path`` if a run may be written there (see :func:`claim_run_dir`), else ConfigError; creates nothing."""
    from lcssm.errors import ConfigError

    if str(path) == "":
        raise ConfigError("--out must name a new or empty directory, or a run directory; got ''")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output directory {path} is an existing file")
    if path.exists() and any(path.iterdir()) and not is_run_dir(path):
        raise ConfigError(f"{path} is a non-empty directory that lcssm did not write (no {RUN_MARKER} marker); "
                          "give --out a new or empty directory, so that nothing in it is overwritten")
    return path


def claim_run_dir(path: str | os.PathLike) -> bool:
    """Make ``path`` a run directory: create it (with its marker) or accept one lcssm wrote; ConfigError for a
    file, for an empty name and for a non-empty directory lcssm did not write (nothing of a user's is written
    over). Returns whether the directory was created now."""
    path = check_run_dir(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / RUN_MARKER).exists():
        atomic_write_text(path / RUN_MARKER, "a run directory written by lcssm\n")
    return created


def check_new_file(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``path`` as a file lcssm may write: ConfigError when it exists (unless ``overwrite``), is a directory, or
    lies in a run's ``checkpoints/`` or is a run's ``config.json`` / marker (never, whatever ``overwrite``)."""
    from lcssm.errors import ConfigError

    path = Path(path)
    if not path.name:
        raise ConfigError("the output file name is empty")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name")
    parent = path.resolve().parent
    if (parent.name == "checkpoints" and is_run_dir(parent.parent)) or (
            path.name in ("config.json", RUN_MARKER) and is_run_dir(parent)):
        raise ConfigError(f"{path} belongs to the run in {parent if parent.name != 'checkpoints' else parent.parent}"
                          "; lcssm never writes over a run's config or checkpoints: choose another file")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it, or choose another file")
    return path


def next_free(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem_NNN.suffix`` with the smallest NNN >= 1 not taken (each call keeps its own file)."""
    i = 1
    while (folder / f"{stem}_{i:03d}{suffix}").exists():
        i += 1
    return folder / f"{stem}_{i:03d}{suffix}"


def read_metrics(run_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """The run's ``metrics.json`` ({} when there is none). A file that is not a JSON object is moved aside to
    ``metrics.json.corrupt`` with a warning, so that the next append starts a new log without losing it."""
    path = Path(run_dir) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        metrics = e
    if not isinstance(metrics, dict) or not all(isinstance(v, list) for v in metrics.values()):
        aside = path.with_name(METRICS_FILE + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"{path} is not a metrics log ({metrics if isinstance(metrics, Exception) else 'wrong shape'}); "
                      f"moved it to {aside} and started a new one", stacklevel=3)
        return {}
    return metrics


def append_metrics(run_dir: str | os.PathLike, kind: str, record: dict[str, Any]) -> dict[str, list[dict]]:
    """Append ``record`` to the ``kind`` list of ``run_dir/metrics.json`` (written atomically); returns the log."""
    metrics = read_metrics(run_dir)
    metrics.setdefault(kind, []).append(to_jsonable(record))
    atomic_write_text(Path(run_dir) / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics


__all__ = ["METRICS_FILE", "RUN_MARKER", "append_metrics", "atomic_save_npy", "atomic_save_npz", "atomic_write_bytes",
           "atomic_write_text", "check_new_file", "check_run_dir", "claim_run_dir", "is_run_dir", "next_free",
           "file_digest", "read_metrics", "replace_synced", "temporary_path"]


def file_digest(path: str | Path, algorithm: str = "sha256", *, chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks, by any :mod:`hashlib` ``algorithm`` (SHA-256 by default)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
