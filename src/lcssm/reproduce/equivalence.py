"""``equivalence``: where LCSS and DSM are the same objective and where they are not.

For the same t and noise z, the per-sample losses of DSM and LCSS (γ = 1, one sample, the same Stein/denoising
center) differ by ``½·(√λ/σ_t)²·‖z‖²`` (expand ``½‖s + z/σ‖²`` against paper Eq. 18; the README's objectives
section), which does not depend on θ: the parameter gradients are identical. This target measures, on a
time-conditional MLP (checkerboard) and the ``tiny`` U-Net (8×8 images), for VE, VP and subVP and centers
``marginal`` / ``data``:

1. the residual of that loss identity and the gradient difference, in float32 and float64 (float precision
   expected);
2. the gradient difference where LCSS is *not* DSM: γ ≠ 1, antithetic pairs, and LCSS with the ``data`` center
   (paper Eq. 19 read literally) against DSM with the SDE's transition kernel; next to the difference between
   two DSM gradients with fresh noise, the scale of Monte-Carlo noise;
3. the bias of the ``data`` center in closed form on the checkerboard: LCSS-data with σ_t learns ∇log(p0 ∗
   N(0, σ_t²)), while the sampler needs ∇log p_t with p_t = (α_t-scaled p0) ∗ N(0, σ_t²). Both are exact through
   :func:`lcssm.data.toy.checkerboard_logpdf` (``log p_t(x) = logpdf(x/α_t, σ_t/α_t) − 2 log α_t``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lcssm.bench.steps import seeded
from lcssm.data.toy import checkerboard, checkerboard_logpdf
from lcssm.device import make_generator
from lcssm.diffusion import diffusion_loss
from lcssm.models import ScoreMLP, build_model
from lcssm.reproduce import Context
from lcssm.reproduce.report import Report, Table
from lcssm.sde import SDE, get_sde

SDE_NAMES = ("ve", "vp", "subvp")
CENTERS = ("marginal", "data")

SETTINGS = {
    "smoke": {"batch_mlp": 16, "batch_unet": 4, "repeats": 1, "t_grid": 8, "bias_points": 2000},
    "quick": {"batch_mlp": 256, "batch_unet": 16, "repeats": 3, "t_grid": 40, "bias_points": 20_000},
    "full": {"batch_mlp": 1024, "batch_unet": 64, "repeats": 10, "t_grid": 100, "bias_points": 200_000},
}


# ----------------------------------------------------------------------------------------------- setups
def _networks(seed: int) -> dict[str, nn.Module]:
    with seeded(seed):
        mlp = ScoreMLP(dim=2, hidden=64, n_hidden=2, activation="silu", time_embed="sinusoidal", embed_dim=32)
        unet = build_model("tiny")
    return {"MLP (2-D)": mlp, "U-Net tiny (8x8)": unet}


def _data(net_name: str, batch: int, g: torch.Generator) -> Tensor:
    if net_name.startswith("MLP"):
        return checkerboard(batch, g)
    try:
        from lcssm.data.digits import load_digits

        pool = load_digits("train")
        return pool[torch.randint(0, len(pool), (batch,), generator=g)]
    except Exception:  # noqa: BLE001 - scikit-learn absent: the identity does not depend on the data
        return torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1


def _flat_grad(net: nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype)
                      for p in net.parameters()])


def _loss_and_grad(net: nn.Module, sde: SDE, x0: Tensor, t: Tensor, noise_seed: int, objective: str, center: str,
                   weighting: str, **options) -> tuple[Tensor, Tensor]:
    """Per-sample loss and flat parameter gradient of ``diffusion_loss`` at the given ``t``, its noise drawn from
    a generator seeded with ``noise_seed`` (the objectives take no noise argument: the same seed is the same z,
    see :func:`_noise`)."""
    net.zero_grad(set_to_none=True)
    loss = diffusion_loss(lambda x, tt: net(x, tt), sde, x0, objective=objective, center=center,
                          weighting=weighting, t=t, generator=make_generator(noise_seed), **options)
    loss.mean().backward()
    return loss.detach(), _flat_grad(net)


def _noise(x0: Tensor, noise_seed: int) -> Tensor:
    """The z that dsm and lcss (one sample) draw from a fresh generator seeded with ``noise_seed`` when ``t`` is
    given: their first and only draw, ``randn`` of x0's shape in x0's dtype."""
    return torch.randn(x0.shape, generator=make_generator(noise_seed), dtype=x0.dtype)


def _rel(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _draw(net_name: str, batch: int, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, int]:
    """(x0, t, noise seed) of one draw."""
    g = make_generator(seed)
    x0 = _data(net_name, batch, g).to(dtype)
    t = (1e-5 + (1 - 1e-5) * torch.rand(batch, generator=g)).to(dtype)
    t[0] = 1e-5  # always include the smallest σ_t, where a 1/σ² would be largest
    return x0, t, seed + 7919


def identity_check(net: nn.Module, net_name: str, sde: SDE, center: str, weighting: str, dtype: torch.dtype,
                   batch: int, seed: int) -> dict[str, float]:
    """Residual of ``dsm − lcss = ½(√λ/σ)²‖z‖²`` (relative to the largest per-sample loss, i.e. in units of
    the round-off of the computation) and the relative gradient difference, for one draw of (x0, t, z)."""
    net = net.to(dtype)
    x0, t, noise = _draw(net_name, batch, seed, dtype)
    l_dsm, g_dsm = _loss_and_grad(net, sde, x0, t, noise, "dsm", center, weighting)
    l_lcss, g_lcss = _loss_and_grad(net, sde, x0, t, noise, "lcss", center, weighting)
    z = _noise(x0, noise)
    _, std = sde.marginal(x0, t)
    if weighting == "sigma2":
        ratio = torch.ones_like(std)
    elif weighting == "none":
        ratio = 1 / std**2
    else:
        ratio = sde.diffusion(t) ** 2 / std**2
    expected = 0.5 * z.flatten(1).pow(2).sum(1) * ratio
    scale = torch.maximum(l_dsm.abs().max(), l_lcss.abs().max())
    return {"loss": float(((l_dsm - l_lcss) - expected).abs().max() / scale), "grad": _rel(g_lcss, g_dsm),
            "min_sigma": float(std.min()), "max_loss": float(scale)}


def divergence_check(net: nn.Module, net_name: str, sde: SDE, batch: int, seed: int) -> dict[str, float]:
    """Relative gradient difference to DSM (marginal center, same t and z) of the variants that are not DSM."""
    net = net.to(torch.float64)
    x0, t, noise = _draw(net_name, batch, seed, torch.float64)
    _, g_dsm = _loss_and_grad(net, sde, x0, t, noise, "dsm", "marginal", "sigma2")
    out = {}
    for key, kw in (("gamma=0.5", {"gamma": 0.5}), ("gamma=2", {"gamma": 2.0}), ("gamma=10", {"gamma": 10.0}),
                    ("antithetic", {"antithetic": True})):
        out[key] = _rel(_loss_and_grad(net, sde, x0, t, noise, "lcss", "marginal", "sigma2", **kw)[1], g_dsm)
    out["center=data"] = _rel(_loss_and_grad(net, sde, x0, t, noise, "lcss", "data", "sigma2")[1], g_dsm)
    out["dsm fresh z"] = _rel(_loss_and_grad(net, sde, x0, t, noise + 1, "dsm", "marginal", "sigma2")[1], g_dsm)
    return out


# ----------------------------------------------------------------------------------------- center bias
def _score(logpdf, x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(logpdf(x).sum(), x)
    return g


def data_center_bias(sde: SDE, t: float, n: int, seed: int) -> dict[str, float]:
    """At time t, for x ~ p_t of the checkerboard: E‖∇log q_t − ∇log p_t‖² and E‖∇log p_t‖², where q_t =
    p0 ∗ N(0, σ_t²) is what LCSS/DSM with the ``data`` center learn and p_t the SDE marginal (float64)."""
    g = make_generator(seed)
    x0 = checkerboard(n, g).double()
    tt = torch.full((n,), t, dtype=torch.float64)
    mean, std = sde.marginal(x0, tt)
    alpha = float((mean[0] / x0[0]).mean()) if not torch.allclose(mean, x0) else 1.0
    sigma = float(std[0])
    x = mean + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s_true = _score(lambda y: checkerboard_logpdf(y / alpha, sigma / alpha), x)
    s_data = _score(lambda y: checkerboard_logpdf(y, sigma), x)
    err = (s_data - s_true).pow(2).sum(1).mean()
    ref = s_true.pow(2).sum(1).mean()
    return {"alpha": alpha, "sigma": sigma, "err": float(err), "ref": float(ref)}


# ------------------------------------------------------------------------------------------------- run
def run(ctx: Context) -> Report:
    cfg = ctx.pick(SETTINGS)
    report = ctx.report("equivalence", "LCSS vs DSM: exact equivalence, and where they differ", cfg)
    sdes = {name: get_sde(name) for name in SDE_NAMES}
    nets = _networks(ctx.seed)
    batch = {"MLP (2-D)": cfg["batch_mlp"], "U-Net tiny (8x8)": cfg["batch_unet"]}
    worst = _identity_section(ctx, cfg, report, sdes, nets, batch)
    _unweighted_section(ctx, report, sdes, nets["MLP (2-D)"], batch["MLP (2-D)"])
    _divergence_section(ctx, cfg, report, sdes, nets, batch)
    weighted = _bias_section(ctx, cfg, report, sdes)
    f64 = worst.get(("f64", "marginal"), math.nan)
    report.section("Verdict")
    report.text(
        f"- For γ = 1 and a shared center, LCSS and DSM have the same parameter gradient to float precision "
        f"(worst relative difference {f64:.1e} in float64, {worst.get(('f32', 'marginal'), math.nan):.1e} in "
        "float32): any speed or quality difference between them in the paper cannot come from the objective.\n"
        "- LCSS differs from DSM only through γ ≠ 1 (a rescaled minimiser), variance reduction (antithetic pairs, "
        "more samples), or the data center, which for VP/subVP trains toward the score of a different "
        f"distribution (λ-weighted relative score error VP {weighted['vp']:.3g}, subVP {weighted['subvp']:.3g}; "
        f"VE {weighted['ve']:.1g}).")
    return report


def _identity_section(ctx: Context, cfg: dict, report: Report, sdes: dict[str, SDE], nets: dict[str, nn.Module],
                      batch: dict[str, int]) -> dict[tuple[str, str], float]:
    """Section 1; returns the worst gradient difference per (precision, center)."""
    R = cfg["repeats"]
    report.section("1. The identity dsm − lcss = ½‖z‖²·λ/σ_t² (γ = 1, same t and z)")
    rows, worst = [], {}
    for net_name, net in nets.items():
        for sde_name, sde in sdes.items():
            for center in CENTERS:
                row = [net_name, sde_name, center]
                for dtype in (torch.float32, torch.float64):
                    res = [identity_check(net, net_name, sde, center, "sigma2", dtype, batch[net_name],
                                          ctx.seed + 100 * r) for r in range(R)]
                    loss_res, grad_res = max(r["loss"] for r in res), max(r["grad"] for r in res)
                    row += [loss_res, grad_res]
                    key = ("f32" if dtype == torch.float32 else "f64", center)
                    worst[key] = max(worst.get(key, 0.0), grad_res)
                rows.append(row)
    report.table("identity", Table(
        ["network", "SDE", "center", "loss residual f32", "grad diff f32", "loss residual f64", "grad diff f64"],
        rows,
        f"λ = σ_t² (score_sde's weighting), so the constant is ½‖z‖². Loss residual: max over samples of "
        f"|(dsm − lcss) − ½‖z‖²| / max |loss| (the round-off of a float computation is relative to the size of "
        f"the numbers it adds, here up to σ_max²‖s‖² for VE); grad diff: max |∇θ lcss − ∇θ dsm| / max |∇θ dsm|; "
        f"each the worst of {R} draws of (x0, t, z), t ~ U(1e-5, 1) with t = 1e-5 always included. Float32 and float64 "
        f"unit round-offs are 6.0e-08 and 1.1e-16. Inputs: checkerboard points (MLP), training digits (U-Net; "
        f"uniform noise images if scikit-learn is absent)."))
    report.results["worst_grad_diff"] = {f"{k[0]}_{k[1]}": v for k, v in worst.items()}
    return worst


def _unweighted_section(ctx: Context, report: Report, sdes: dict[str, SDE], mlp: nn.Module, batch: int) -> None:
    rows = []
    for sde_name, sde in sdes.items():
        row = [sde_name]
        for dtype in (torch.float32, torch.float64):
            res = identity_check(mlp, "MLP (2-D)", sde, "marginal", "none", dtype, batch, ctx.seed)
            row += [res["loss"], res["grad"]]
        row += [res["min_sigma"], res["max_loss"]]
        rows.append(row)
    report.table("identity_unweighted", Table(
        ["SDE", "loss residual f32", "grad diff f32", "loss residual f64", "grad diff f64", "min σ_t in batch",
         "largest per-sample loss (f32)"], rows,
        "The same with λ = 1 (MLP, marginal center): the constant is ½‖z‖²/σ_t², up to ~1/σ_min² large. The "
        "identity still holds to round-off relative to the loss size, and the gradients agree exactly (both "
        "reduce to (s + z/σ)·∂s). What float32 loses is the loss value's θ-dependent part: a loss of size L has "
        "absolute round-off ~6e-8·L, so a J_SM part of size O(d) is unresolvable in the logged loss once L is "
        "~1e7 times larger. This is DSM's 'σ → 0 dilemma' (paper Sec. 2.3) and equally LCSS's; λ = σ_t² removes "
        "it for both."))


def _divergence_section(ctx: Context, cfg: dict, report: Report, sdes: dict[str, SDE], nets: dict[str, nn.Module],
                        batch: dict[str, int]) -> None:
    R = cfg["repeats"]
    report.section("2. Where LCSS is not DSM")
    rows = []
    for net_name, net in nets.items():
        for sde_name, sde in sdes.items():
            res = [divergence_check(net, net_name, sde, batch[net_name], ctx.seed + 100 * r) for r in range(R)]
            keys = list(res[0])
            rows.append([net_name, sde_name] + [sum(r[k] for r in res) / R for k in keys])
    report.table("divergence", Table(
        ["network", "SDE"] + keys, rows,
        f"max |∇θ variant − ∇θ dsm| / max |∇θ dsm| (float64, λ = σ_t², mean of {R} draws), DSM with the marginal "
        "center and the same (x0, t, z). 'center=data' is LCSS (γ = 1) with the Stein kernel centered at x0 "
        "(Eq. 19 literally); it equals DSM for VE, where the two centers coincide. 'dsm fresh z' is DSM against "
        "DSM with an independent z: the size of ordinary Monte-Carlo noise, for scale. A per-draw difference "
        "mixes a systematic part and noise; the data center's systematic part is computed in closed form in "
        "section 3. γ ≠ 1 changes the "
        "minimiser to γ·∇log p_t (it minimises γ·sᵀz/σ + ½‖s‖² pointwise), a systematic difference; antithetic "
        "pairs change only the noise."))


def _bias_section(ctx: Context, cfg: dict, report: Report, sdes: dict[str, SDE]) -> dict[str, float]:
    """Section 3; returns the λ-weighted relative score error of the data center per SDE."""
    report.section("3. Bias of the data center (closed form, checkerboard)")
    n_t = cfg["t_grid"]
    ts = [1e-3 + (1 - 1e-3) * i / (n_t - 1) for i in range(n_t)]
    curves: dict[str, list[float]] = {}
    weighted: dict[str, float] = {}
    for sde_name, sde in sdes.items():
        num = den = 0.0
        rel = []
        for i, t in enumerate(ts):
            b = data_center_bias(sde, t, cfg["bias_points"], ctx.seed + i)
            rel.append(b["err"] / b["ref"])
            num += b["sigma"] ** 2 * b["err"]
            den += b["sigma"] ** 2 * b["ref"]
        curves[sde_name] = rel
        weighted[sde_name] = num / den
    rows = []
    for t in (0.01, 0.1, 0.3, 0.5, 0.7, 1.0):
        row = [t]
        for sde in sdes.values():
            b = data_center_bias(sde, t, cfg["bias_points"], ctx.seed + 7)
            row += [b["alpha"], b["sigma"], b["err"] / b["ref"]]
        rows.append(row)
    rows.append(["λ-weighted over t"] + sum((["-", "-", weighted[s]] for s in sdes), []))
    report.table("data_center_bias", Table(
        ["t"] + [f"{s} {q}" for s in sdes for q in ("α_t", "σ_t", "rel. score error")], rows,
        f"Relative score error E‖∇log q_t − ∇log p_t‖² / E‖∇log p_t‖² at x ~ p_t ({cfg['bias_points']} points), "
        "where q_t = p0 ∗ N(0, σ_t²) is the minimiser of LCSS (or DSM) with the data center and p_t the SDE "
        f"marginal the sampler integrates. Last row: average over {n_t} t in [1e-3, 1] weighted by λ = σ_t², the "
        "weighting of the loss. VE is exactly unbiased (α_t = 1); for subVP, α_t² + σ_t² ≠ 1 as well."))
    report.results["data_center_bias_curves"] = {"t": ts, **curves}
    path = ctx.out_dir / "data_center_bias.png"
    _plot_bias(path, ts, curves)
    report.figure(path, "Relative error of the score learned with the data center against ∇log p_t, over t "
                        "(VE is 0 and drawn at the 1e-12 floor).")
    return weighted


def _plot_bias(path, ts: list[float], curves: dict[str, list[float]]) -> None:
    from lcssm.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for sde_name, rel in curves.items():
        ax.plot(ts, [max(r, 1e-12) for r in rel], label=sde_name)
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("relative score error of the data center")
    ax.set_title("LCSS with the data center vs the marginal score (checkerboard)")
    ax.legend()
    save_figure(fig, path)
