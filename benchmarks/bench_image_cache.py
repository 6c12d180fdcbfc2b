#!/usr/bin/env python
"""Memory and time of an image folder decoded into memory versus through the on-disk cache (``--cache-dir``).

Writes a synthetic folder of random PNGs, then measures in fresh processes (one per row, so the peak resident
memory of one does not leak into the next): loading the folder into memory, building the cache, loading the
built cache, and one training epoch of batches from each. "RSS +" is the growth of the process's resident memory
over its state after importing lcssm, split into anonymous memory (private to the process; every rank pays it)
and file-backed pages (the mapped cache: shared by all processes through the page cache, dropped under pressure).

    python benchmarks/bench_image_cache.py --n 2000 --size 128
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size + 16, size, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")


def _rss_mib() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process in MiB (Linux /proc/self/status)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile"))


def _measure(root: str, size: int, cache: str | None, epoch: bool, queue) -> None:
    import torch

    from lcssm.data.images import ImageFolder
    from lcssm.data.levels import ImageData
    from lcssm.experiments.images import ImageBatches

    torch.set_num_threads(1)
    anon0, file0 = _rss_mib()
    start = time.perf_counter()
    folder = ImageFolder(root, resolution=size, cache_dir=cache, progress=False)
    levels = folder.load_all()
    loaded = time.perf_counter() - start
    anon1, file1 = _rss_mib()
    epoch_seconds, anon2, file2 = float("nan"), float("nan"), float("nan")
    if epoch:
        batches = ImageBatches(ImageData(levels, 256, root), 64, 0, "minus_one_one", True)
        t0 = time.perf_counter()
        for step in range((len(levels) + 63) // 64):
            batches(step)
        epoch_seconds = time.perf_counter() - t0
        anon2, file2 = _rss_mib()
    queue.put((loaded, anon1 - anon0, file1 - file0, epoch_seconds, anon2 - anon0, file2 - file0))


def _run(*args) -> tuple[float, ...]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="images in the synthetic folder")
    p.add_argument("--size", type=int, default=128, help="resolution (the files are size+16 x size, cropped)")
    p.add_argument("--workdir", help="where the folder and cache go (default: a temporary folder, removed)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lcssm-bench-cache-"))
    root, cache = work / "images", work / "cache"
    try:
        t0 = time.perf_counter()
        if not root.exists():
            _write_folder(root, args.n, args.size)
        print(f"{args.n} random PNGs of {args.size + 16}x{args.size} written in {time.perf_counter() - t0:.1f} s; "
              f"decoded: {args.n * 3 * args.size**2 / 2**20:.0f} MiB uint8\n")
        shutil.rmtree(cache, ignore_errors=True)
        rows = [
            ("in memory (no --cache-dir)", _run(str(root), args.size, None, True)),
            ("cache: first load (builds the file)", _run(str(root), args.size, str(cache), False)),
            ("cache: later load (maps the file)", _run(str(root), args.size, str(cache), True)),
        ]
        print("| load | seconds | anon / file RSS + after load (MiB) | epoch of batches (s) "
              "| anon / file RSS + after the epoch (MiB) |")
        print("|---|---|---|---|---|")
        for name, (seconds, anon1, file1, epoch, anon2, file2) in rows:
            after = "—" if epoch != epoch else f"{epoch:.2f} | {anon2:.0f} / {file2:.0f}"
            print(f"| {name} | {seconds:.2f} | {anon1:.0f} / {file1:.0f} | " + (after if epoch == epoch else "— | —")
                  + " |")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
