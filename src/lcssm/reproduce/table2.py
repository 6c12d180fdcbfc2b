"""``table2``: milliseconds per training step of every objective, side by side in one process (paper Table 2).

(a) the checkerboard energy MLP (2 → 300 → 300 → 1, score = ∇ₓf, paper App. B) at batch 10k; (b) an NCSNv2
network (the paper's FFHQ architecture, NCSNv2 "Deepest", at reduced width and resolution so that a CPU
finishes) trained as NCSNv2 is: VE perturbation with per-sample σ, λ = σ², through
:func:`lcssm.diffusion.diffusion_loss`. A step is zero_grad, loss, backward, Adam step, ``loss.item()``.
Each objective trains its own copy of the same initial network; steps are interleaved round-robin after a
warm-up (:func:`lcssm.bench.timing.time_round_robin`); the table gives the median and inter-quartile
range. Exact SM on images needs d = C·H·W vector-Jacobian products per step: its time is extrapolated
linearly from steps computing 1 and 3 of the trace terms (marked as such). "bare" is the cheapest possible
step, forward + backward of ½‖s(x)‖², for scale.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from lcssm.bench.steps import LABELS, make_train_step, partial_exact_sm, seeded, variant_loss
from lcssm.bench.timing import TimingStats, paired_ratio, time_round_robin
from lcssm.device import make_generator
from lcssm.diffusion import diffusion_loss, time_conditional
from lcssm.models import EnergyMLP, build_model, count_parameters
from lcssm.models.precond import ScoreModel
from lcssm.reproduce import Context
from lcssm.reproduce.report import Report, Table
from lcssm.sde import VESDE

OBJECTIVES = ("exact_sm", "ssm", "ssm_vr", "fdssm", "dsm", "lcss")
#: paper Table 2 (ms): checkerboard MLP and FFHQ 256 NCSNv2; exact SM and SSM-VR were not measured there
PAPER = {
    "mlp": {"ssm": 497, "fdssm": 445, "dsm": 430, "lcss": 419},
    "image": {"ssm": 1838, "fdssm": 1367, "dsm": 1381, "lcss": 1075},
}

SETTINGS = {
    "smoke": {"mlp_hidden": 32, "mlp_batch": 256, "image_nf": 4, "image_size": 8, "image_batch": 2,
              "repeats": 2, "warmup": 1, "max_seconds": 2.0},
    "quick": {"mlp_hidden": 300, "mlp_batch": 10_000, "image_nf": 16, "image_size": 64, "image_batch": 4,
              "repeats": 10, "warmup": 2, "max_seconds": 30.0},
    "full": {"mlp_hidden": 300, "mlp_batch": 10_000, "image_nf": 32, "image_size": 128, "image_batch": 4,
             "repeats": 25, "warmup": 3, "max_seconds": 120.0},
}

SIGMA_TOY = 0.1  # the checkerboard noise scale (paper App. B)
IMAGE_PRESET = "ncsnv2_ffhq256"


def _bare(score_fn, x: Tensor) -> Tensor:
    return 0.5 * score_fn(x).flatten(1).pow(2).sum(1)


def mlp_steps(cfg: dict, seed: int, device: torch.device) -> tuple[dict, dict]:
    """Step closures for the energy MLP on checkerboard batches (one fixed batch: data loading is not timed)."""
    from lcssm.data.toy import checkerboard

    with seeded(seed):
        base = EnergyMLP(dim=2, hidden=cfg["mlp_hidden"]).to(device)
    x = checkerboard(cfg["mlp_batch"], make_generator(seed)).to(device)
    steps = {}
    for v in OBJECTIVES:
        model = copy.deepcopy(base)
        steps[v] = make_train_step(model, lambda g, m=model, v=v: variant_loss(v, m, x, sigma=SIGMA_TOY, generator=g),
                                   lr=1e-3, seed=seed, device=device)
    model = copy.deepcopy(base)
    steps["bare"] = make_train_step(model, lambda g, m=model: _bare(m, x), lr=1e-3, seed=seed, device=device)
    info = {"parameters": count_parameters(base), "d": 2, "batch": cfg["mlp_batch"]}
    return steps, info


def image_steps(cfg: dict, seed: int, device: torch.device) -> tuple[dict, dict, dict]:
    """Step closures for NCSNv2 (the FFHQ preset's architecture at ``image_nf`` width and ``image_size``)."""
    from lcssm.models.presets import get_preset

    preset = get_preset(IMAGE_PRESET)
    sde = VESDE(sigma_min=preset.training["sigma_min"], sigma_max=preset.training["sigma_max"])
    with seeded(seed):
        # score(x, t) = NCSNv2(x) / σ_t: the network gets the SDE's marginal std from the ScoreModel wrapper
        base = ScoreModel(build_model(IMAGE_PRESET, nf=cfg["image_nf"], image_size=cfg["image_size"]), sde)
    base = base.to(device)
    size, batch = cfg["image_size"], cfg["image_batch"]
    x = torch.rand(batch, 3, size, size, generator=make_generator(seed)).to(device)

    steps = {}
    for v in OBJECTIVES:
        if v == "exact_sm":
            continue
        model = copy.deepcopy(base)
        steps[v] = make_train_step(
            model, lambda g, m=model, v=v: diffusion_loss(m, sde, x, objective=v, generator=g),
            lr=1e-4, seed=seed, device=device)
    extrap = {}
    for k in (1, 3):
        model = copy.deepcopy(base)

        def loss(g, m=model, k=k):
            t = 1e-5 + (1 - 1e-5) * torch.rand(batch, generator=g, device=device)
            mean, std = sde.marginal(x, t)
            xt = mean + std.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g, device=device)
            return partial_exact_sm(time_conditional(m, t), xt, k) * std**2

        extrap[k] = make_train_step(model, loss, lr=1e-4, seed=seed, device=device)
    model = copy.deepcopy(base)
    steps["bare"] = make_train_step(
        model, lambda g, m=model: _bare(lambda y: m(y, torch.ones(len(y), device=device)), x), lr=1e-4, seed=seed,
        device=device)
    info = {"parameters": count_parameters(base), "d": 3 * size * size, "batch": batch,
            "architecture": f"NCSNv2 ({IMAGE_PRESET} stages: ch_mult {base.backbone.config.ch_mult}, dilations "
                            f"{base.backbone.config.dilations}), nf = {cfg['image_nf']}, {size}x{size}x3"}
    return steps, extrap, info


def _ratio(stats: dict[str, TimingStats], v: str) -> float:
    """Median of the per-round ratios v / LCSS."""
    return paired_ratio(stats[v], stats["lcss"]).median


def _ratio_cell(stats: dict[str, TimingStats], v: str) -> str:
    return paired_ratio(stats[v], stats["lcss"]).fmt()


def run(ctx: Context) -> Report:
    cfg = ctx.pick(SETTINGS)
    report = ctx.report("table2", "Training-step time per objective (paper Table 2)",
                        {**cfg, "torch_threads": torch.get_num_threads()})
    common = {"repeats": cfg["repeats"], "warmup": cfg["warmup"], "max_seconds": cfg["max_seconds"],
              "device": ctx.device, "seed": ctx.seed}

    steps, mlp_info = mlp_steps(cfg, ctx.seed, ctx.device)
    mlp = time_round_robin(steps, **common)
    del steps
    steps, extrap_steps, img_info = image_steps(cfg, ctx.seed, ctx.device)
    img = time_round_robin({**steps, **{f"exact_k{k}": s for k, s in extrap_steps.items()}}, **common)
    del steps, extrap_steps
    t1, t3 = img.pop("exact_k1").median, img.pop("exact_k3").median
    per_term = (t3 - t1) / 2
    exact_img = t1 + per_term * (img_info["d"] - 1)

    rows = []
    for v in OBJECTIVES + ("bare",):
        label = LABELS.get(v, "bare: ½‖s(x)‖² only")
        row = [label, mlp[v].ms(), _ratio_cell(mlp, v), PAPER["mlp"].get(v, "-"),
               PAPER["mlp"][v] / PAPER["mlp"]["lcss"] if v in PAPER["mlp"] else "-"]
        if v == "exact_sm":
            row += [f"≈ {1e3 * exact_img:.4g} (extrapolated)", exact_img / img["lcss"].median]
        else:
            row += [img[v].ms(), _ratio_cell(img, v)]
        row += [PAPER["image"].get(v, "-"),
                PAPER["image"][v] / PAPER["image"]["lcss"] if v in PAPER["image"] else "-"]
        rows.append(row)
    report.section("Milliseconds per training step")
    report.table("step_ms", Table(
        ["objective", "MLP ms: median [q1, q3]", "MLP / LCSS: median [q1, q3]", "paper MLP ms",
         "paper MLP / LCSS", "NCSNv2 ms: median [q1, q3]", "NCSNv2 / LCSS: median [q1, q3]", "paper FFHQ ms",
         "paper FFHQ / LCSS"], rows,
        f"(a) energy MLP 2→{cfg['mlp_hidden']}→{cfg['mlp_hidden']}→1 ({mlp_info['parameters']} parameters), "
        f"batch {mlp_info['batch']}, σ = {SIGMA_TOY}, FD-SSM ε = 0.1, one slice/sample. (b) "
        f"{img_info['architecture']} ({img_info['parameters']} parameters), batch {img_info['batch']}, VE "
        f"σ ∈ [0.01, 348], λ = σ². {cfg['repeats']} timed steps per objective after {cfg['warmup']} warm-up "
        f"round(s), interleaved round-robin (fewer for objectives past {cfg['max_seconds']} s); ratios are the "
        f"statistics of the per-round ratios (same round, same background load). Exact SM on "
        f"images: 1 + (d − 1)·(per-term time) with d = {img_info['d']}, per-term time {1e3 * per_term:.3g} ms "
        "from steps with 1 and 3 trace terms. The paper's numbers come from GPUs (A100) at the full "
        "FFHQ 256 size, so only the ratios are comparable."))
    report.results["ms"] = {"mlp": {v: 1e3 * s.median for v, s in mlp.items()},
                            "image": {**{v: 1e3 * s.median for v, s in img.items()},
                                      "exact_sm_extrapolated": 1e3 * exact_img}}

    fig_path = ctx.out_dir / "step_ms.png"
    _plot(fig_path, mlp, img, exact_img)
    report.figure(fig_path, "Median ms per step with the inter-quartile range; left MLP, right NCSNv2 "
                            "(exact SM extrapolated, hatched).")

    report.section("Verdict")
    report.text(
        f"- DSM / LCSS step time: {_ratio_cell(mlp, 'dsm')} (MLP), {_ratio_cell(img, 'dsm')} (NCSNv2), median "
        f"[quartiles] of per-round ratios; the paper reports "
        f"{PAPER['mlp']['dsm'] / PAPER['mlp']['lcss']:.3f} and {PAPER['image']['dsm'] / PAPER['image']['lcss']:.3f}. "
        "Both objectives are one forward and one backward pass through the same network with the same "
        "gradient (see `equivalence`); a ratio whose inter-quartile range contains 1 is no measurable speed "
        "difference.\n"
        f"- SSM / LCSS: {_ratio(mlp, 'ssm'):.2f} (MLP), {_ratio(img, 'ssm'):.2f} (NCSNv2); FD-SSM / LCSS: "
        f"{_ratio(mlp, 'fdssm'):.2f} (MLP), {_ratio(img, 'fdssm'):.2f} (NCSNv2) — paper: "
        f"{PAPER['mlp']['ssm'] / PAPER['mlp']['lcss']:.2f}, {PAPER['image']['ssm'] / PAPER['image']['lcss']:.2f}; "
        f"{PAPER['mlp']['fdssm'] / PAPER['mlp']['lcss']:.2f}, "
        f"{PAPER['image']['fdssm'] / PAPER['image']['lcss']:.2f}.")
    return report


def _plot(path, mlp: dict[str, TimingStats], img: dict[str, TimingStats], exact_img: float) -> None:
    from lcssm.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stats, title in ((axes[0], mlp, "checkerboard energy MLP"), (axes[1], img, "NCSNv2")):
        names = [v for v in OBJECTIVES + ("bare",) if v in stats or v == "exact_sm"]
        meds, lo, hi, hatch = [], [], [], []
        for v in names:
            if v in stats:
                s = stats[v]
                meds.append(1e3 * s.median)
                lo.append(1e3 * (s.median - s.q1))
                hi.append(1e3 * (s.q3 - s.median))
                hatch.append("")
            else:
                meds.append(1e3 * exact_img)
                lo.append(0.0)
                hi.append(0.0)
                hatch.append("//")
        bars = ax.bar([LABELS.get(v, "bare") for v in names], meds, yerr=[lo, hi], capsize=3, color="tab:blue")
        for b, h in zip(bars, hatch):
            b.set_hatch(h)
        ax.set_yscale("log")
        ax.set_ylabel("ms per step")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)
