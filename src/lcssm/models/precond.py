"""One network contract: :class:`ScoreModel` turns any backbone into ``score(x, t)``.

Every backbone is called as ``backbone(x, t, sigma)`` with ``t`` the (B,) time and ``sigma`` the (B,) marginal
std σ_t of the run's SDE (each network uses what it needs: ScoreMLP and U-Nets embed t or log σ, NCSNv2 and
σ-scaled U-Nets divide by σ, an energy MLP uses neither). The wrapper owns what lies between the SDE and the
network, in the spirit of EDM's preconditioning (Karras et al. 2022, Table 1):

- conditioning: σ_t (and α_t) from the SDE at the given t: its closed form, or for a non-affine SDE its noise
  table (:mod:`lcssm.noise_table`: the flow's mean slope and the root of E[Var(x_t | x_0)]), so that every
  preconditioning below applies to any SDE;
- input scaling ``c_in``: ``unit_variance`` feeds ``x/√(α_t² + σ_t²)`` (the std of x_t for unit-variance data);
- output scaling ``c_out``: ``inv_sigma`` divides the output by σ_t (the network predicts −z for x_t = α_t x0 +
  σ_t z, so its target stays O(1) at every t); ``neg_inv_sigma`` divides it by −σ_t (the network predicts z, as
  DDPM++ does: score_sde's ``get_score_fn`` returns −output/σ_t for VP and subVP SDEs); ``gaussian_skip`` adds
  to ``output/σ_t`` the exact score ``−x/(α_t² + σ_t²)`` of unit-variance Gaussian data diffused to t (EDM's
  c_skip, written for the score): the network learns only the data's departure from that Gaussian, and where it
  has seen no training points (the prior's tails at large σ_t) the score still pulls towards the data.
  ``stationary_skip`` blends that Gaussian score with the score of the SDE's stationary law,
  ``α_t²·(−x/(α_t² + σ_t²)) + (1 − α_t²)·∇log p_∞(x)`` (the same as ``gaussian_skip`` for VP, whose p_∞ is N(0, I)):
  for a non-affine SDE p_T is its non-Gaussian stationary law, and the probability-flow ODE, whose velocity
  ``β(t)(φ − ½s)`` vanishes there, amplifies any error of the network at large t by ∫β; with this skip the score
  at T is exact before the network adds anything.
- ``edm`` (both ``c_in`` and ``c_out``): EDM's preconditioning with the data's scale σ_data (Karras et al. 2022,
  Table 1, "Ours"), written for the score of an SDE in its σ-parametrisation ς_t = σ_t/α_t, y = x/α_t: the
  denoiser ``D(y; ς) = c_skip·y + c_out·F(c_in·y)`` with ``c_skip = σ_d²/(ς² + σ_d²)``, ``c_out = ς σ_d/√(ς² + σ_d²)``,
  ``c_in = 1/√(ς² + σ_d²)``, and the score ``(α_t D − x)/σ_t²``, which is
  ``−x/(σ_t² + α_t² σ_d²) + F · α_t σ_d / (σ_t √(σ_t² + α_t² σ_d²))``; the network's input is
  ``x/√(σ_t² + α_t² σ_d²)``. With ``weighting="edm"`` (:func:`lcssm.diffusion.diffusion_loss`) the network's
  regression target F has unit variance at every noise level for data of second moment σ_d². c_noise is the
  backbone's own embedding of t (or of log σ_t); the backbone's own division by σ must be off.

Pipelines, samplers and DDP see only ``ScoreModel(x, t)``; a run without an SDE (one noise scale, ``lcssm toy``)
calls ``ScoreModel(x)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lcssm.errors import ConfigError
from lcssm.sde import SDE
from lcssm.tensors import bcast

__all__ = ["C_IN", "C_OUT", "ScoreModel", "build_score_model"]

C_IN = ("none", "unit_variance", "edm")
C_OUT = ("none", "inv_sigma", "neg_inv_sigma", "gaussian_skip", "stationary_skip", "edm")


class ScoreModel(nn.Module):
    """``score(x, t)`` of ``backbone`` under ``sde`` (None: ``score(x)``, the backbone's output as is).

    The backbone is the only submodule (``backbone.*`` in the state dict); the SDE holds no parameters.
    """

    def __init__(self, backbone: nn.Module, sde: SDE | None, *, c_in: str = "none", c_out: str = "none",
                 sigma_data: float = 1.0) -> None:
        super().__init__()
        if c_in not in C_IN or c_out not in C_OUT:
            raise ConfigError(f"unknown preconditioning c_in={c_in!r}, c_out={c_out!r}")
        if not sigma_data > 0:
            raise ConfigError(f"sigma_data must be > 0, got {sigma_data!r}")
        if "edm" in (c_in, c_out) and getattr(backbone, "needs_sigma", False) and not _embeds_log_sigma(backbone):
            raise ConfigError(f"{type(backbone).__name__} divides its output by sigma itself; EDM preconditioning "
                              "needs the raw output (a U-Net with scale_by_sigma off)")
        self.sigma_data = float(sigma_data)
        if sde is None and (c_in, c_out) != ("none", "none"):
            raise ConfigError("input/output scaling needs an SDE (its sigma_t)")
        if c_out == "stationary_skip" and sde is not None:
            try:
                sde.stationary_score(torch.zeros(1, 1))
            except ConfigError:
                raise ConfigError(f"c_out='stationary_skip' needs an SDE with a stationary law (vp, subvp, tanh, "
                                  f"student); got {sde!r}") from None
        if sde is not None and not sde.has_levels and (c_in, c_out) != ("none", "none"):
            raise ConfigError(f"{sde!r} has no closed-form alpha_t, sigma_t and no noise table "
                              "(lcssm.noise_levels.tabulate): use c_in='none', c_out='none'")
        self.backbone, self.sde, self.c_in, self.c_out = backbone, sde, c_in, c_out

    def log_density(self, x: Tensor) -> Tensor:
        """The unnormalised log-density f of an energy backbone (score = ∇ₓf) without an SDE: what MALA's
        acceptance test needs. ConfigError for a backbone that models the score directly."""
        log_density = getattr(self.backbone, "log_density", None)  # an energy backbone's method
        if self.sde is not None or log_density is None:
            raise ConfigError("this model has no log-density: MALA needs an energy model (model.arch energy_mlp, "
                              "lcssm toy); use the langevin sampler")
        return log_density(x)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if self.sde is None:
            return self.backbone(x)
        if t is None:
            raise ValueError("this score model is time-conditional: call it as model(x, t)")
        if not self.sde.has_levels:
            return self.backbone(x, t, None)
        alpha, sigma = self.sde.marginal_coefficients(t.to(x.dtype))
        out = self.backbone(self._scale_input(x, alpha, sigma), t, sigma)
        if self.c_out == "none":
            return out
        if self.c_out == "edm":
            return self._edm_score(x, out, alpha, sigma)
        scale = -sigma.to(out.dtype) if self.c_out == "neg_inv_sigma" else sigma.to(out.dtype)
        out = out / bcast(scale, out)
        if self.c_out not in ("gaussian_skip", "stationary_skip"):
            return out
        gaussian = -x * bcast(1 / (alpha**2 + sigma**2), x).to(out.dtype)  # unit-variance Gaussian data at t
        if self.c_out == "gaussian_skip":
            return out + gaussian
        w = bcast(alpha**2, x).clamp(0.0, 1.0).to(out.dtype)  # the share of the data left in x_t
        return out + w * gaussian + (1 - w) * self.sde.stationary_score(x).to(out.dtype)

    def _scale_input(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """c_in: ``x/√(α_t² + σ_t²)`` (unit_variance), ``x/√(σ_t² + α_t² σ_d²)`` (edm) or x."""
        if self.c_in == "unit_variance":
            return x * bcast(torch.rsqrt(alpha**2 + sigma**2), x)
        if self.c_in == "edm":
            return x * bcast(torch.rsqrt(sigma**2 + (alpha * self.sigma_data) ** 2), x)
        return x

    def _edm_score(self, x: Tensor, out: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """EDM's ``(α_t D − x)/σ_t²`` for ``D = c_skip·y + c_out·F``, in closed form (see the module docstring)."""
        total = sigma**2 + (alpha * self.sigma_data) ** 2
        gain = alpha * self.sigma_data / (sigma * total.sqrt())
        return bcast(gain, out).to(out.dtype) * out - x * bcast(1 / total, x).to(out.dtype)


def _embeds_log_sigma(backbone: nn.Module) -> bool:
    """A U-Net that needs sigma only for its log-σ embedding (its output is not divided by σ)."""
    config = getattr(backbone, "config", None)
    return config is not None and not getattr(config, "scale_by_sigma", True)


def build_score_model(spec, sde: SDE | None, dim: int | None = None) -> ScoreModel:
    """:class:`ScoreModel` of a ModelSpec under ``sde``."""
    from lcssm.models.build import build_model

    backbone = build_model(spec, dim, time_conditional=sde is not None)
    edm = "edm" in (spec.c_in, spec.c_out)
    if edm and spec.sigma_data is None:
        raise ConfigError("model.sigma_data is not set: a run with EDM preconditioning measures it from its training "
                          "data when it is created (or set it with --set model.sigma_data=VALUE)")
    return ScoreModel(backbone, sde, c_in=spec.c_in, c_out=spec.c_out, sigma_data=spec.sigma_data if edm else 1.0)
