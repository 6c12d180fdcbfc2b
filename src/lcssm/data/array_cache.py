"""Decode once, map many times: a uint8 array cached on disk as one ``.npy`` file and memory-mapped.

A decoded image folder of the paper's large presets does not fit in memory (CelebA-HQ at 1024² is 94 GB of
uint8, FFHQ at 256² 14 GB per data-parallel rank). With a cache directory the folder is decoded once into
``DIR/<name>-<key>.npy`` and every later load (the other ranks, a resumed run, evaluation) maps that file
copy-on-write: pages are read on demand and shared between processes through the OS page cache.

The file name carries a hash of everything the content depends on (the caller's ``key``: source path, size,
channels, a fingerprint of the source files), so a changed source gets a new file rather than a stale one. The
array is written to a temporary file and renamed into place, then its metadata (``.json``) the same way; a
load trusts a file only when its metadata exists and agrees with it, and rebuilds an unreadable one with a
warning. Under ``torchrun`` only local rank 0 builds; the other ranks of the node wait for its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lcssm.errors import DataError
from lcssm.files import atomic_write_text, replace_synced, temporary_path

FORMAT_VERSION = 1


def cache_file(cache_dir: str | os.PathLike, name: str, key: dict[str, Any]) -> Path:
    """``cache_dir/<name>-<16 hex digits of sha256(key)>.npy``; ``name`` is reduced to a file-name-safe form."""
    digest = hashlib.sha256(json.dumps({"version": FORMAT_VERSION, **key}, sort_keys=True).encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "array"
    return Path(cache_dir) / f"{safe}-{digest[:16]}.npy"


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _open(path: Path) -> tuple[np.ndarray, dict] | None:
    """The cached rows and metadata, or None when the pair is absent, unreadable or inconsistent."""
    meta_path = _meta_path(path)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(path, mmap_mode="c")  # copy-on-write: writable for torch, never written back
        n = int(meta["rows"])
        if array.dtype != np.uint8 or list(array.shape[1:]) != list(meta["shape"][1:]) or not 0 < n <= len(array):
            raise ValueError(f"holds {array.dtype} {array.shape}, metadata says {meta['shape']} with {n} rows")
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable cache file {str(path)!r} ({e}); rebuilding it", stacklevel=3)
        return None
    return array[:n], meta


def load_or_build(
    cache_dir: str | os.PathLike,
    name: str,
    key: dict[str, Any],
    shape: tuple[int, ...],
    build: Callable[[np.ndarray], dict[str, Any]],
    *,
    local_rank: int | None = None,
    poll_seconds: float = 1.0,
    timeout: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The cached uint8 rows for ``key`` and their metadata, building the cache file first if needed.

    ``build(out)`` fills the leading rows of ``out`` (a writable uint8 memmap of ``shape``) and returns JSON-able
    metadata with ``"rows"``: how many rows it filled (≥ 1; the rest are ignored). That metadata is stored beside
    the array and returned on every later load, so whatever ``build`` reports (e.g. skipped files) can be
    replayed. ``local_rank`` (default: ``$LOCAL_RANK``, else 0) other than 0 waits, polling every
    ``poll_seconds``, for local rank 0's file instead of building; ``timeout`` (seconds, None = no limit) bounds
    that wait and raises DataError when it runs out.
    """
    path = cache_file(cache_dir, name, key)
    found = _open(path)
    if found is not None:
        return found
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank != 0:
        print(f"waiting for local rank 0 to write the data cache {path}", file=sys.stderr, flush=True)
        start = time.monotonic()
        while found is None:
            if timeout is not None and time.monotonic() - start > timeout:
                raise DataError(f"gave up after {timeout:g} s waiting for local rank 0 to write {path}")
            time.sleep(poll_seconds)
            if _meta_path(path).is_file():
                found = _open(path)
        return found

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache directory {str(path.parent)!r}: {e}") from e
    tmp = temporary_path(path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        meta = dict(build(out))
        out.flush()
        del out
        rows = int(meta.get("rows", 0))
        if not 0 < rows <= shape[0]:
            raise ValueError(f"build reported {rows} rows for an array of {shape[0]}")
        meta.update(rows=rows, shape=list(shape), version=FORMAT_VERSION)  # the key is in the file name
        replace_synced(tmp, path)  # the array first: metadata present means the array beside it is complete
        atomic_write_text(_meta_path(path), json.dumps(meta) + "\n")
    except OSError as e:
        raise DataError(f"cannot write the cache file {str(path)!r}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    found = _open(path)
    if found is None:
        raise DataError(f"the cache file {path} just written cannot be read back")
    return found


__all__ = ["FORMAT_VERSION", "cache_file", "load_or_build"]
