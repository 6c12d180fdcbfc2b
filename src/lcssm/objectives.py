"""Score-matching objectives as plain functions of a score function.

Every objective takes ``score_fn`` mapping ``(N, *D) -> (N, *D)`` and data ``x`` of shape ``(B, *D)`` and
returns a **per-sample loss of shape (B,)**; reduction is the caller's. ssm, ssm_vr, fdssm and lcss estimate
the score-matching objective J_SM (Hyvärinen 2005) — lcss its curvature-smoothed version
J_LCS = J_SM + ½σ²‖∇ₓs‖²_F — so their values share one scale. dsm is J_SM up to a θ-independent constant.

Batching contract: to evaluate several perturbations in one forward pass, an objective may call ``score_fn``
on ``k`` stacked blocks of the batch, shape ``(k·B, *D)``, where row ``j·B + i`` belongs to sample ``i``.
A time-conditional wrapper repeats its ``t`` accordingly (see :mod:`lcssm.diffusion`). The score function must
treat rows independently (no batch statistics), which is also what the Jacobian-based objectives assume.

``sqrt_weight`` (optional, shape ``(B,)``) is √λ: the per-sample loss is multiplied by λ. It is given as a root
so that for lcss and dsm the weighted loss can be formed with √λ/σ, which for the usual λ = σ² is exactly 1: the
1/σ² cancels analytically instead of numerically, even where σ² underflows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from lcssm.errors import ConfigError
from lcssm.tensors import Probe, bcast, probe_noise

ScoreFn = Callable[[Tensor], Tensor]

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ScoreFn",
    "dsm",
    "exact_sm",
    "fdssm",
    "get_objective",
    "lcss",
    "ssm",
    "ssm_vr",
]


# ----------------------------------------------------------------------------------------------- helpers
def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row inner product over all non-batch dims."""
    return (a * b).flatten(1).sum(1)


def _sqnorm(a: Tensor) -> Tensor:
    return a.flatten(1).pow(2).sum(1)


def _per_sample(sigma: float | Tensor, x: Tensor, name: str = "sigma") -> Tensor:
    """Validate a positive scalar, a ``(B,)`` tensor or (for the noise scale of a diagonal kernel) a tensor of x's
    shape, and return it as ``(B,)`` or x's shape on x's device."""
    batch = x.shape[0]
    if isinstance(sigma, Tensor):
        if sigma.dim() == 0:
            sigma = sigma.expand(batch)
        if sigma.shape not in ((batch,), x.shape):
            raise ValueError(f"{name} must be a float or a tensor of shape ({batch},) or {tuple(x.shape)}, got "
                             f"{tuple(sigma.shape)}")
        if not bool(torch.all(sigma > 0)):
            raise ValueError(f"{name} must be > 0, got min {sigma.min().item():g}")
        return sigma.to(device=x.device, dtype=x.dtype)
    sigma = float(sigma)
    if not sigma > 0 or sigma == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {sigma:g}")
    return torch.full((batch,), sigma, device=x.device, dtype=x.dtype)


def _spread(sig: Tensor, x: Tensor) -> Tensor:
    """A ``(B,)`` or x-shaped noise scale as a tensor that broadcasts against x."""
    return bcast(sig, x) if sig.dim() == 1 else sig


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, *D) with at least one data dim, got {tuple(x.shape)}")


def _noise_stack(
    given: Tensor | None, x: Tensor, n: int, kind: Probe, generator: torch.Generator | None, name: str
) -> Tensor:
    """Return noise of shape ``(n, *x.shape)``: the given one (validated) or fresh draws."""
    if n < 1:
        raise ValueError(f"the number of {name} draws must be >= 1, got {n}")
    if given is not None:
        if given.shape == x.shape:
            given = given.unsqueeze(0)
        if given.shape[1:] != x.shape:
            raise ValueError(
                f"{name} must have shape {tuple(x.shape)} or (n, *{tuple(x.shape)}), got {tuple(given.shape)}"
            )
        return given.to(device=x.device, dtype=x.dtype)
    return probe_noise((n, *x.shape), kind, generator=generator, device=x.device, dtype=x.dtype)


def _score(score_fn: ScoreFn, x: Tensor) -> Tensor:
    s = score_fn(x)
    if s.shape != x.shape:
        raise ValueError(f"score_fn must return the shape of its input {tuple(x.shape)}, got {tuple(s.shape)}")
    return s


def _tile(x: Tensor, n: int) -> Tensor:
    """``n`` stacked copies of the batch, ``(n·B, *D)`` (no copy for n = 1)."""
    return x if n == 1 else x.repeat(n, *([1] * (x.dim() - 1)))


def _blocks(t: Tensor, n: int) -> Tensor:
    """``(n·B, *D)`` -> ``(n, B, *D)``."""
    return t.view(n, -1, *t.shape[1:])


def _weighted(loss: Tensor, sqrt_weight: Tensor | None) -> Tensor:
    return loss if sqrt_weight is None else loss * sqrt_weight**2


def _requires_grad(x: Tensor) -> Tensor:
    """x as a tensor that autograd can differentiate with respect to (keeps its graph if it has one)."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


# -------------------------------------------------------------------------------------------- objectives
def exact_sm(score_fn: ScoreFn, x: Tensor, *, generator: torch.Generator | None = None,
             sqrt_weight: Tensor | None = None) -> Tensor:
    """Exact score matching (Hyvärinen 2005, paper Eq. 4): ``tr(∇ₓs(x)) + ½‖s(x)‖²``.

    The Jacobian trace costs d vector-Jacobian products: use only for small d. It draws no noise (``generator``
    is accepted for the common calling convention and unused).
    """
    _check_x(x)
    x = _requires_grad(x)
    s = _score(score_fn, x)
    flat = s.flatten(1)
    d = flat.shape[1]
    trace = x.new_zeros(x.shape[0])
    for i in range(d):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True, retain_graph=True)
        trace = trace + g.flatten(1)[:, i]
    return _weighted(trace + 0.5 * _sqnorm(s), sqrt_weight)


def _sliced(
    score_fn: ScoreFn,
    x: Tensor,
    n_slices: int,
    probe: Probe,
    v: Tensor | None,
    generator: torch.Generator | None,
    variance_reduced: bool,
) -> Tensor:
    _check_x(x)
    vs = _noise_stack(v, x, n_slices, probe, generator, "v")
    n = vs.shape[0]
    xr = _requires_grad(_tile(x, n))
    vr = vs.reshape(-1, *x.shape[1:])
    s = _score(score_fn, xr)
    sv = _dot(s, vr)
    (g,) = torch.autograd.grad(sv.sum(), xr, create_graph=True)
    hutchinson = _dot(g, vr)  # vᵀ∇ₓ(vᵀs)
    second = 0.5 * _sqnorm(s) if variance_reduced else 0.5 * sv.pow(2)
    return _blocks(hutchinson + second, n).mean(0)


def ssm(
    score_fn: ScoreFn,
    x: Tensor,
    *,
    n_slices: int = 1,
    probe: Probe = "rademacher",
    v: Tensor | None = None,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
) -> Tensor:
    """Sliced score matching (Song et al. 2019): ``vᵀ∇ₓ(vᵀs(x)) + ½(vᵀs(x))²``, E[vvᵀ] = I.

    Averaged over ``n_slices`` projections v (Rademacher or Gaussian), all in one forward pass.
    """
    return _weighted(_sliced(score_fn, x, n_slices, probe, v, generator, variance_reduced=False), sqrt_weight)


def ssm_vr(
    score_fn: ScoreFn,
    x: Tensor,
    *,
    n_slices: int = 1,
    probe: Probe = "rademacher",
    v: Tensor | None = None,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
) -> Tensor:
    """Variance-reduced SSM (Song et al. 2019): ``vᵀ∇ₓ(vᵀs(x)) + ½‖s(x)‖²``."""
    return _weighted(_sliced(score_fn, x, n_slices, probe, v, generator, variance_reduced=True), sqrt_weight)


def fdssm(
    score_fn: ScoreFn,
    x: Tensor,
    *,
    fd_eps: float = 0.1,
    n_slices: int = 1,
    v: Tensor | None = None,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
) -> Tensor:
    """Finite-difference SSM (Pang et al. 2020; paper Eq. 7 multiplied by d, i.e. on the J_SM scale).

    ``d·vᵀ(s(x+v) − s(x−v)) / (2‖v‖²) + ⅛‖s(x+v) + s(x−v)‖²`` with ``v = ε·u/‖u‖`` (ε = ``fd_eps``), u Gaussian, so
    E[vvᵀ] = ε²I/d; ‖v‖² = ε² for drawn v, and for a given ``v`` (already scaled) its own norm is used.
    One batched forward pass on ``cat([x + v, x − v])``.
    """
    _check_x(x)
    if not fd_eps > 0:
        raise ValueError(f"fd_eps must be > 0, got {fd_eps:g}")
    vs = _noise_stack(v, x, n_slices, "gaussian", generator, "v")
    if v is None:
        norms = vs.flatten(2).norm(dim=2)  # (n, B)
        vs = fd_eps * vs / norms.view(*norms.shape, *([1] * (x.dim() - 1)))
    n = vs.shape[0]
    d = x[0].numel()
    xr = _tile(x, n)
    vr = vs.reshape(-1, *x.shape[1:])
    s = _score(score_fn, torch.cat([xr + vr, xr - vr]))
    s_plus, s_minus = s.chunk(2)
    first = d * _dot(vr, s_plus - s_minus) / (2.0 * _sqnorm(vr))
    second = 0.125 * _sqnorm(s_plus + s_minus)
    return _weighted(_blocks(first + second, n).mean(0), sqrt_weight)


def dsm(
    score_fn: ScoreFn,
    x: Tensor,
    sigma: float | Tensor,
    *,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
) -> Tensor:
    """Denoising score matching (Vincent 2011): ``½‖s(x̃) + z/σ‖²`` with ``x̃ = x + σz``. ``sigma``: a float, one
    per sample (B,) or one per coordinate (x's shape: the diagonal kernel N(x, diag σ²), target −z/σ elementwise).

    Weighted form with r = √λ: ``½‖r·s(x̃) + (r/σ)·z‖²`` (for λ = σ²: ``½‖σ·s + z‖²``).
    """
    _check_x(x)
    sig = _per_sample(sigma, x)
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have shape {tuple(x.shape)} for dsm, got {tuple(z.shape)}")
    z = _noise_stack(z, x, 1, "gaussian", generator, "z")[0]
    s = _score(score_fn, x + _spread(sig, x) * z)
    r = torch.ones(len(x), device=x.device, dtype=x.dtype) if sqrt_weight is None else sqrt_weight
    target = bcast(r / sig, x) * z if sig.dim() == 1 else bcast(r, x) * z / sig
    return 0.5 * _sqnorm(bcast(r, x) * s + target)


def lcss(
    score_fn: ScoreFn,
    x: Tensor,
    sigma: float | Tensor,
    *,
    gamma: float = 1.0,
    n_samples: int = 1,
    antithetic: bool = False,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
    sqrt_weight: Tensor | None = None,
) -> Tensor:
    """Local curvature smoothing with Stein's identity (Osada et al. 2024, Eq. 18; Eq. 21 with γ).

    ``γ·s(x′)ᵀz/σ + ½‖s(x′)‖²`` with ``x′ = x + σz``, averaged over ``n_samples`` draws of z; for γ = 1 its
    expectation is J_LCS(x, σ) = E_{x′}[J_SM(x′)] (Lemma 1 with Corollary 2). ``antithetic=True`` evaluates
    each z together with −z (2·n_samples forward rows): the first term becomes the central difference
    ``γ·(s(x+σz) − s(x−σz))ᵀz/(2σ)``, which removes its O(1/σ) variance. Weighted form with r = √λ:
    ``γ·r·(r/σ)·sᵀz + ½·r²·‖s‖²`` (for λ = σ²: ``γ·σ·sᵀz + ½σ²‖s‖²``). ``sigma`` as in :func:`dsm`; per coordinate
    ``x′ = x + σ⊙z`` and the Stein term is ``γ·r²·sᵀ(z/σ)`` (Stein's identity for the diagonal Gaussian).
    """
    _check_x(x)
    sig = _per_sample(sigma, x)
    zs = _noise_stack(z, x, n_samples, "gaussian", generator, "z")
    if antithetic:
        zs = torch.cat([zs, -zs])
    n = zs.shape[0]
    xr = _tile(x, n)
    zr = zs.reshape(-1, *x.shape[1:])
    sig_r = _tile(sig, n)
    s = _score(score_fn, xr + _spread(sig_r, xr) * zr)
    r = torch.ones(len(xr), device=x.device, dtype=x.dtype) if sqrt_weight is None else _tile(sqrt_weight, n)
    stein = r * (r / sig_r) * _dot(s, zr) if sig.dim() == 1 else r**2 * _dot(s, zr / sig_r)
    loss = gamma * stein + 0.5 * r**2 * _sqnorm(s)
    return _blocks(loss, n).mean(0)


@dataclass(frozen=True)
class Objective:
    """A registered objective: its function, whether it takes a noise scale ``sigma`` (and perturbs x itself),
    whether its target needs the closed-form Gaussian kernel of that noise (``needs_kernel``: dsm regresses onto
    −z/σ, so it cannot use the ``simulated`` center of :func:`lcssm.diffusion.diffusion_loss`), and its options as
    ``{run-spec field: keyword of the function}`` (:class:`lcssm.experiments.spec.ObjectiveSpec` field names on
    the left).

    Calling it is the one calling convention of every objective:
    ``objective(score_fn, x, sigma=..., generator=..., sqrt_weight=..., noise=..., **options) -> (B,)``, where
    ``sigma`` is required by the noise objectives and refused by the others, and ``noise`` (optional) fixes the
    random draws instead of ``generator``: the function's own ``z`` (lcss, dsm) or ``v`` (ssm, ssm_vr, fdssm),
    named by ``noise_kwarg`` (exact_sm draws none).
    """

    name: str
    fn: Callable[..., Tensor]
    needs_sigma: bool
    options: Mapping[str, str]
    needs_kernel: bool = False
    noise_kwarg: str | None = None

    def __call__(self, score_fn: ScoreFn, x: Tensor, *, sigma: float | Tensor | None = None,
                 generator: torch.Generator | None = None, sqrt_weight: Tensor | None = None,
                 noise: Tensor | None = None, **options: object) -> Tensor:
        unknown = sorted(set(options) - set(self.options.values()))
        if unknown:
            raise ConfigError(f"{self.name} takes no option {unknown[0]!r}; its options: "
                              f"{', '.join(self.options.values()) or 'none'}")
        if noise is not None:
            if self.noise_kwarg is None:
                raise ConfigError(f"{self.name} draws no noise; it takes no noise tensor")
            options = {**options, self.noise_kwarg: noise}
        if self.needs_sigma:
            if sigma is None:
                raise ConfigError(f"{self.name} needs a noise scale sigma")
            return self.fn(score_fn, x, sigma=sigma, generator=generator, sqrt_weight=sqrt_weight, **options)
        if sigma is not None:
            raise ConfigError(f"{self.name} takes no sigma: it is evaluated at the data points given")
        return self.fn(score_fn, x, generator=generator, sqrt_weight=sqrt_weight, **options)


_SLICED = MappingProxyType({"n_noise": "n_slices", "probe": "probe"})

_NONE: MappingProxyType[str, str] = MappingProxyType({})

#: every objective by name; ``options`` maps run-spec fields to the function's keywords
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective(name="exact_sm", fn=exact_sm, needs_sigma=False, options=_NONE),
    Objective(name="ssm", fn=ssm, needs_sigma=False, options=_SLICED, noise_kwarg="v"),
    Objective(name="ssm_vr", fn=ssm_vr, needs_sigma=False, options=_SLICED, noise_kwarg="v"),
    Objective(name="fdssm", fn=fdssm, needs_sigma=False,
              options=MappingProxyType({"fd_eps": "fd_eps", "n_noise": "n_slices"}), noise_kwarg="v"),
    Objective(name="dsm", fn=dsm, needs_sigma=True, options=_NONE, needs_kernel=True, noise_kwarg="z"),
    Objective(name="lcss", fn=lcss, needs_sigma=True,
              options=MappingProxyType({"gamma": "gamma", "antithetic": "antithetic", "n_noise": "n_samples"}),
              noise_kwarg="z"),
)}


def get_objective(name: str) -> Objective:
    """The objective called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}") from None
