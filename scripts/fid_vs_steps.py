#!/usr/bin/env python
"""FID against training steps: score chosen checkpoints of image runs with chosen samplers, as one table and plot.

    python scripts/fid_vs_steps.py --run edm=runs/digits_edm --run score_sde=runs/digits_old \\
        --steps 500 1000 2000 4000 --sampler heun:nfe=35 --sampler dpmpp_2m:nfe=20 \\
        --sampler euler_ancestral:nfe=35 --sampler pc --n-samples 2000 --out docs/digits/fid_vs_steps

Each cell is one `lcssm fid RUN --step S --sampler NAME ...` (:func:`lcssm.experiments.fid.fid_run`: fresh samples
of that checkpoint's EMA model, seed 0, scored against the run's reference split). A run may be given more than
once under one label (e.g. a 1,000-step run for the early checkpoints and a 4,000-step run for the late ones: with
warmup-then-constant learning rates, the same seed and the same data order, step k of both is the same model); the
first run holding the step is used. Cells are appended to OUT.jsonl as they finish and read again by a rerun with
the same cell, so an interrupted sweep resumes; OUT.md (the table) and OUT.png (the plot) are rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _sampler(text: str) -> tuple[str, dict]:
    """``NAME[:field=value,...]`` -> (label, sampler overrides)."""
    from lcssm.config import coerce, type_hints
    from lcssm.experiments.spec import SamplerSpec

    name, _, rest = text.partition(":")
    hints = type_hints(SamplerSpec)
    overrides: dict = {"name": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in hints:
            raise SystemExit(f"fid_vs_steps: {key!r} is not a sampler field")
        overrides[key] = coerce(value, hints[key], f"sampler.{key}")
    return text, overrides


def _runs(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"fid_vs_steps: --run takes LABEL=RUN_DIR, got {item!r}")
        out.append((label, Path(path)))
    return out


def _has_step(run_dir: Path, step: int) -> bool:
    from lcssm.training.checkpoint import list_checkpoints

    return any(s == step for s, _ in list_checkpoints(run_dir))


def _table(cells: list[dict], labels: list[str], samplers: list[str], steps: list[int], what: str) -> str:
    head = "| recipe | sampler | " + " | ".join(f"{s:,} steps" for s in steps) + " |"
    rows = [head, "|" + "---|" * (2 + len(steps))]
    for label in labels:
        for sampler in samplers:
            values = []
            for step in steps:
                hit = [c for c in cells if (c["recipe"], c["sampler_arg"], c["step"]) == (label, sampler, step)]
                values.append(f"{hit[-1]['fid']:.2f} ({hit[-1]['nfe']:g})" if hit else "—")
            rows.append(f"| {label} | {sampler} | " + " | ".join(values) + " |")
    return f"{what} (NFE in brackets)\n\n" + "\n".join(rows) + "\n"


def _plot(path: Path, cells: list[dict], labels: list[str], samplers: list[str], what: str) -> None:
    from lcssm.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, label in enumerate(labels):
        for j, sampler in enumerate(samplers):
            pts = sorted((c["step"], c["fid"]) for c in cells if (c["recipe"], c["sampler_arg"]) == (label, sampler))
            if pts:
                ax.plot(*zip(*pts), styles[j % len(styles)], marker="o", color=f"C{i}", label=f"{label}, {sampler}")
    ax.set_xlabel("training steps")
    ax.set_ylabel(what)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--sampler", action="append", required=True, metavar="NAME[:field=value,...]")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--reference", default="train", choices=("train", "test"))
    p.add_argument("--out", required=True, help="OUT.jsonl, OUT.md and OUT.png are written")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--table-only", action="store_true",
                   help="write OUT.md and OUT.png from the cells in OUT.jsonl; measure no missing cell")
    args = p.parse_args(argv)

    import torch

    from lcssm.experiments.fid import fid_run

    if args.threads:
        torch.set_num_threads(args.threads)
    runs, samplers = _runs(args.run), [_sampler(s) for s in args.sampler]
    labels = list(dict.fromkeys(label for label, _ in runs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    cells = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    what = "FID"
    for label in labels:
        for step in args.steps:
            dirs = [d for lab, d in runs if lab == label and _has_step(d, step)]
            if not dirs:
                print(f"fid_vs_steps: no {label} run holds step {step}; skipped", file=sys.stderr)
                continue
            for text, overrides in samplers:
                key = (label, text, step, args.n_samples, args.reference)
                if args.table_only or any(
                        (c["recipe"], c["sampler_arg"], c["step"], c["n"], c["reference_split"]) == key for c in cells):
                    continue
                record = fid_run(dirs[0], {**overrides, "n_samples": args.n_samples}, step=step, device="cpu",
                                 reference_split=args.reference)
                cell = {"recipe": label, "sampler_arg": text, "run": str(dirs[0]), "reference_split": args.reference,
                        **{k: record[k] for k in ("step", "fid", "kid", "nfe", "n", "sample_seconds", "features",
                                                  "reference", "file")}}
                cells.append(cell)
                with log.open("a") as f:
                    f.write(json.dumps(cell) + "\n")
                print(f"{label} step {step} {text}: {record['features']} FID {record['fid']:.3f} "
                      f"({record['nfe']:g} NFE, {record['sample_seconds']:.0f} s)", flush=True)
    if cells:
        what = f"{cells[0]['features']} FID, {cells[0]['n']} samples vs {cells[0]['reference']}"
    names = [s for s, _ in samplers]
    out.with_suffix(".md").write_text(_table(cells, labels, names, args.steps, what))
    _plot(out.with_suffix(".png"), cells, labels, names, what)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
