"""Objective and sampler benchmark: the ratios that say what an objective costs, measured in one process.

For a score MLP and a U-Net (the ``digits`` preset; ``tiny`` at the smoke size), VE SDE, through
:func:`lcssm.diffusion.diffusion_loss`:

- step-time ratios LCSS / bare step (forward + backward of ½‖s‖² + Adam), LCSS / DSM, SSM / LCSS,
  SSM-VR / LCSS, FD-SSM / LCSS, exact SM / LCSS, antithetic LCSS / LCSS; each the median [q1, q3] of per-round
  ratios of interleaved steps (:mod:`lcssm.bench.timing`);
- exact SM / LCSS as the dimension d grows (the MLP at several d; the U-Net at 8×8 and 16×16);
- sampler overhead: wall time of the PC sampler and the probability-flow ODE sampler divided by (number of
  network evaluations × time of one evaluation at that batch), i.e. everything that is not the network;
- memory per objective: bytes autograd saves to build the loss graph (any device) and, on CUDA, the peak.

Used by ``benchmarks/bench_objectives.py`` and ``lcssm bench``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lcssm.bench.steps import LABELS, make_train_step, seeded
from lcssm.bench.timing import TimingStats, cuda_peak_memory, graph_memory, paired_ratio, time_round_robin
from lcssm.device import make_generator, resolve_device
from lcssm.diffusion import diffusion_loss
from lcssm.models import ScoreMLP, build_model
from lcssm.models.precond import ScoreModel
from lcssm.reproduce.report import Table, machine_info
from lcssm.sde import VESDE

__all__ = ["SETTINGS", "run_benchmark", "format_benchmark", "main"]

OBJECTIVES = ("exact_sm", "ssm", "ssm_vr", "fdssm", "dsm", "lcss", "lcss_antithetic")
SETTINGS = {
    "smoke": {"mlp_dim": 8, "mlp_hidden": 32, "mlp_batch": 64,
              "unet": "tiny", "unet_nf": 8, "unet_size": 4, "unet_batch": 4,
              "repeats": 2, "warmup": 1, "max_seconds": 2.0, "dims": [2, 8], "unet_sizes": [4],
              "pc_steps": 5, "ode_tol": 1e-2, "sample_batch": 8},
    "quick": {"mlp_dim": 32, "mlp_hidden": 256, "mlp_batch": 1024,
              "unet": "digits", "unet_nf": 32, "unet_size": 8, "unet_batch": 32,
              "repeats": 15, "warmup": 2, "max_seconds": 30.0, "dims": [2, 8, 32, 128], "unet_sizes": [8],
              "pc_steps": 100, "ode_tol": 1e-4, "sample_batch": 64},
    "full": {"mlp_dim": 32, "mlp_hidden": 256, "mlp_batch": 4096,
             "unet": "digits", "unet_nf": 32, "unet_size": 8, "unet_batch": 128,
             "repeats": 40, "warmup": 3, "max_seconds": 120.0, "dims": [2, 8, 32, 128, 512], "unet_sizes": [8, 16],
             "pc_steps": 1000, "ode_tol": 1e-5, "sample_batch": 256},
}


# ------------------------------------------------------------------------------------------- models
def _setup(kind: str, cfg: dict, seed: int, device: torch.device, *, dim: int | None = None,
           image_size: int | None = None) -> tuple[ScoreModel, Tensor, VESDE]:
    """(score model ``s(x, t)``, a data batch, the SDE): a time-conditional score MLP or the U-Net preset, each
    wrapped in :class:`~lcssm.models.precond.ScoreModel` (no input/output scaling), which hands the U-Net σ_t."""
    g = make_generator(seed)
    sde = VESDE(sigma_min=0.01, sigma_max=10.0)
    if kind == "mlp":
        d = dim or cfg["mlp_dim"]
        with seeded(seed):
            backbone = ScoreMLP(dim=d, hidden=cfg["mlp_hidden"], n_hidden=3, activation="silu",
                                time_embed="sinusoidal")
        x = torch.randn(cfg["mlp_batch"], d, generator=g).to(device)
        return ScoreModel(backbone, sde).to(device), x, sde
    image_size = image_size or cfg["unet_size"]
    with seeded(seed):
        backbone = build_model(cfg["unet"], image_size=image_size, nf=cfg["unet_nf"])
    x = (torch.rand(cfg["unet_batch"], 1, image_size, image_size, generator=g) * 2 - 1).to(device)
    return ScoreModel(backbone, sde).to(device), x, sde


def _loss_fn(variant: str, score_model: Callable, sde: VESDE, x: Tensor) -> Callable[[torch.Generator], Tensor]:
    if variant == "bare":
        def bare(g: torch.Generator) -> Tensor:
            t = 0.5 * torch.ones(x.shape[0], device=x.device)
            return 0.5 * score_model(x, t).flatten(1).pow(2).sum(1)

        return bare
    kw = {"antithetic": True} if variant == "lcss_antithetic" else {}
    objective = "lcss" if variant == "lcss_antithetic" else variant
    return lambda g: diffusion_loss(score_model, sde, x, objective=objective, generator=g, **kw)


def _steps(kind: str, cfg: dict, variants: Sequence[str], seed: int, device: torch.device, **setup_kw) -> dict:
    base, x, sde = _setup(kind, cfg, seed, device, **setup_kw)
    out = {}
    for v in variants:
        m = copy.deepcopy(base)
        out[v] = make_train_step(m, _loss_fn(v, m, sde, x), lr=1e-4, seed=seed, device=device)
    return out


# ------------------------------------------------------------------------------------------- measurements
def step_ratios(kind: str, cfg: dict, seed: int, device: torch.device) -> dict:
    steps = _steps(kind, cfg, OBJECTIVES + ("bare",), seed, device)
    stats = time_round_robin(steps, repeats=cfg["repeats"], warmup=cfg["warmup"], max_seconds=cfg["max_seconds"],
                             device=device, seed=seed)
    ratios = {
        "LCSS / bare step": paired_ratio(stats["lcss"], stats["bare"]),
        "LCSS / DSM": paired_ratio(stats["lcss"], stats["dsm"]),
        "SSM / LCSS": paired_ratio(stats["ssm"], stats["lcss"]),
        "SSM-VR / LCSS": paired_ratio(stats["ssm_vr"], stats["lcss"]),
        "FD-SSM / LCSS": paired_ratio(stats["fdssm"], stats["lcss"]),
        "exact SM / LCSS": paired_ratio(stats["exact_sm"], stats["lcss"]),
        "LCSS antithetic / LCSS": paired_ratio(stats["lcss_antithetic"], stats["lcss"]),
    }
    return {"ms": stats, "ratios": ratios}


def memory(kind: str, cfg: dict, seed: int, device: torch.device) -> dict[str, dict[str, float | None]]:
    base, x, sde = _setup(kind, cfg, seed, device)
    out = {}
    for v in OBJECTIVES + ("bare",):
        m = copy.deepcopy(base)
        fn = _loss_fn(v, m, sde, x)
        g = make_generator(seed, device)
        saved = graph_memory(lambda fn=fn, g=g: fn(g).mean())

        def step(fn=fn, m=m, g=g):
            fn(g).mean().backward()
            m.zero_grad(set_to_none=True)

        peak = cuda_peak_memory(step, device)
        out[v] = {"graph_MiB": saved / 2**20, "cuda_peak_MiB": None if peak is None else peak / 2**20}
    return out


def exact_vs_d(cfg: dict, seed: int, device: torch.device) -> list[tuple[str, int, TimingStats]]:
    rows = []
    for d in cfg["dims"]:
        steps = _steps("mlp", cfg, ("exact_sm", "lcss"), seed, device, dim=d)
        st = time_round_robin(steps, repeats=cfg["repeats"], warmup=1, max_seconds=cfg["max_seconds"],
                              device=device, seed=seed)
        rows.append(("MLP", d, paired_ratio(st["exact_sm"], st["lcss"])))
    for size in cfg["unet_sizes"]:
        steps = _steps("unet", cfg, ("exact_sm", "lcss"), seed, device, image_size=size)
        st = time_round_robin(steps, repeats=min(cfg["repeats"], 5), warmup=min(cfg["warmup"], 1),
                              max_seconds=cfg["max_seconds"], device=device, seed=seed)
        rows.append(("U-Net", size * size, paired_ratio(st["exact_sm"], st["lcss"])))
    return rows


def sampler_overhead(kind: str, cfg: dict, seed: int, device: torch.device) -> dict[str, dict[str, float]]:
    """PC (reverse diffusion + Langevin corrector) and probability-flow ODE: seconds, NFE, and
    seconds / (NFE × one evaluation)."""
    from lcssm.sampling.ode import ode_sample
    from lcssm.sampling.reverse import pc_sample

    model, x, sde = _setup(kind, cfg, seed, device)
    score = model.eval()
    shape = (cfg["sample_batch"], *x.shape[1:])
    xb = torch.randn(shape, generator=make_generator(seed)).to(device)
    tb = torch.full((shape[0],), 0.5, device=device)

    def one_eval() -> None:
        with torch.no_grad():
            score(xb, tb)

    per_eval = time_round_robin({"eval": one_eval}, repeats=max(cfg["repeats"], 10), warmup=2, device=device,
                                seed=seed)["eval"].median
    # warm-up (first-call costs: scipy import, allocator), not timed
    for run in (lambda x, g: pc_sample(score, sde, x, n_steps=2, generator=g),
                lambda x, g: ode_sample(score, sde, x, rtol=1e-2, atol=1e-2)):
        g = make_generator(seed, device)
        run(sde.prior_sample(shape, generator=g, device=device), g)
    out = {}
    n = cfg["pc_steps"]
    t0 = time.perf_counter()
    g = make_generator(seed, device)
    pc_sample(score, sde, sde.prior_sample(shape, generator=g, device=device), n_steps=n, generator=g)
    pc_s = time.perf_counter() - t0
    nfe_pc = 2 * n + 1  # one corrector and one predictor evaluation per step, plus the denoising step
    out["PC"] = {"seconds": pc_s, "nfe": nfe_pc, "overhead": pc_s / (nfe_pc * per_eval)}
    t0 = time.perf_counter()
    g = make_generator(seed, device)
    _, nfe = ode_sample(score, sde, sde.prior_sample(shape, generator=g, device=device), rtol=cfg["ode_tol"],
                        atol=cfg["ode_tol"])
    ode_s = time.perf_counter() - t0
    out["ODE"] = {"seconds": ode_s, "nfe": nfe + 1, "overhead": ode_s / ((nfe + 1) * per_eval)}
    out["_eval_ms"] = {"seconds": per_eval, "nfe": 1, "overhead": 1.0}
    return out


# ------------------------------------------------------------------------------------------------ driver
def run_benchmark(size: str = "quick", *, seed: int = 0, device: str | torch.device = "cpu",
                  log: Callable[[str], None] = lambda s: None) -> dict:
    """Every measurement above; returns a dict of results (TimingStats objects for the timings)."""
    if size not in SETTINGS:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SETTINGS)}")
    cfg = SETTINGS[size]
    dev = resolve_device(device)
    res: dict = {"size": size, "settings": cfg, "machine": machine_info(dev), "seed": seed}
    for kind in ("mlp", "unet"):
        log(f"step ratios ({kind})")
        res[f"steps_{kind}"] = step_ratios(kind, cfg, seed, dev)
        log(f"memory ({kind})")
        res[f"memory_{kind}"] = memory(kind, cfg, seed, dev)
        log(f"samplers ({kind})")
        res[f"samplers_{kind}"] = sampler_overhead(kind, cfg, seed, dev)
    log("exact SM vs d")
    res["exact_vs_d"] = exact_vs_d(cfg, seed, dev)
    return res


def _describe(cfg: dict) -> dict[str, str]:
    return {
        "mlp": f"time-conditional score MLP, d = {cfg['mlp_dim']}, 3×{cfg['mlp_hidden']} SiLU, batch "
               f"{cfg['mlp_batch']}",
        "unet": f"U-Net '{cfg['unet']}' preset, nf = {cfg['unet_nf']}, {cfg['unet_size']}×{cfg['unet_size']}×1, batch "
                f"{cfg['unet_batch']}",
    }


def format_benchmark(res: dict) -> str:
    """The results as Markdown tables."""
    cfg = res["settings"]
    m = res["machine"]
    desc = _describe(cfg)
    parts = [f"# lcssm objective benchmark ({res['size']})",
             f"{m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']} with {m['torch_threads']} "
             f"threads, device {m['device']}; seed {res['seed']}. VE SDE (σ ∈ [0.01, 10]), λ = σ², "
             "diffusion_loss; one slice / one noise sample. Timings: median [q1, q3] of per-round ratios, "
             f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up round(s)."]
    keys = list(res["steps_mlp"]["ratios"])
    rows = [[k, res["steps_mlp"]["ratios"][k].fmt(), res["steps_unet"]["ratios"][k].fmt()] for k in keys]
    parts.append(Table(["ratio", f"MLP ({desc['mlp']})", f"U-Net ({desc['unet']})"], rows).markdown())
    rows = [[LABELS.get(v, "bare step"), res["steps_mlp"]["ms"][v].fmt(1e3), res["steps_unet"]["ms"][v].fmt(1e3)]
            for v in OBJECTIVES + ("bare",)]
    parts.append(Table(["objective", "MLP ms/step", "U-Net ms/step"], rows).markdown())
    rows = [[kind, d, st.fmt()] for kind, d, st in res["exact_vs_d"]]
    parts.append(Table(["model", "d", "exact SM / LCSS"], rows,
                       "Exact SM costs d vector-Jacobian products per step; LCSS one forward pass.").markdown())
    rows = []
    for kind in ("mlp", "unet"):
        s = res[f"samplers_{kind}"]
        for name in ("PC", "ODE"):
            rows.append([kind, name, s[name]["nfe"], s[name]["seconds"], s[name]["overhead"]])
    parts.append(Table(["model", "sampler", "NFE", "seconds", "time / (NFE × one eval)"], rows,
                       f"batch {cfg['sample_batch']}; PC: {cfg['pc_steps']} steps of reverse diffusion + one "
                       f"Langevin corrector step; ODE: RK45 with rtol = atol = {cfg['ode_tol']}; one network "
                       f"evaluation: MLP {1e3 * res['samplers_mlp']['_eval_ms']['seconds']:.3g} ms, U-Net "
                       f"{1e3 * res['samplers_unet']['_eval_ms']['seconds']:.3g} ms.").markdown())
    rows = []
    for v in OBJECTIVES + ("bare",):
        row = [LABELS.get(v, "bare step")]
        for kind in ("mlp", "unet"):
            mm = res[f"memory_{kind}"][v]
            row.append(mm["graph_MiB"])
            if mm["cuda_peak_MiB"] is not None:
                row.append(mm["cuda_peak_MiB"])
        rows.append(row)
    cuda = res["memory_mlp"]["lcss"]["cuda_peak_MiB"] is not None
    headers = ["objective", "MLP graph MiB"] + (["MLP CUDA peak MiB"] if cuda else []) + ["U-Net graph MiB"] + (
        ["U-Net CUDA peak MiB"] if cuda else [])
    parts.append(Table(headers, rows, "Graph MiB: distinct storages autograd saves while the loss is built "
                                      "(activations held for backward, incl. the create-graph passes of the "
                                      "Jacobian objectives).").markdown())
    return "\n\n".join(parts) + "\n"


def _to_json(res: dict) -> dict:
    def conv(o):
        if isinstance(o, TimingStats):
            return {"median": o.median, "q1": o.q1, "q3": o.q3, "n": o.n}
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return o

    return conv(res)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=list(SETTINGS), default="quick",
                   help="smoke: seconds, numbers meaningless; quick: a few minutes on 2 cores; full: longer")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice, reported)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the networks' weights and the inputs (default: 0)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to this file")


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    res = run_benchmark(args.size, seed=args.seed, device=args.device,
                        log=lambda s: print(f"[bench] {s}", flush=True))
    print(format_benchmark(res))
    if args.json:
        Path(args.json).write_text(json.dumps(_to_json(res), indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return run_from_args(p.parse_args(argv))
