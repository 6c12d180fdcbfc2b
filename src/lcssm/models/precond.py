"""One network contract: :class:`ScoreModel` turns any backbone into ``score(x, t)``.

Every backbone is called as ``backbone(x, t, sigma)`` with ``t`` the (B,) time and ``sigma`` the (B,) marginal
std σ_t of the run's SDE (each network uses what it needs: ScoreMLP and U-Nets embed t or log σ, NCSNv2 and
σ-scaled U-Nets divide by σ, an energy MLP uses neither). The wrapper owns what lies between the SDE and the
network, in the spirit of EDM's preconditioning (Karras et al. 2022, Table 1):

- conditioning: σ_t (and α_t) from the SDE at the given t;
- input scaling ``c_in``: ``unit_variance`` feeds ``x/√(α_t² + σ_t²)`` (the std of x_t for unit-variance data);
- output scaling ``c_out``: ``inv_sigma`` divides the output by σ_t (the network predicts −z for x_t = α_t x0 +
  σ_t z, so its target stays O(1) at every t); ``neg_inv_sigma`` divides it by −σ_t (the network predicts z, as
  DDPM++ does: score_sde's ``get_score_fn`` returns −output/σ_t for VP and subVP SDEs); ``gaussian_skip`` adds
  to ``output/σ_t`` the exact score ``−x/(α_t² + σ_t²)`` of unit-variance Gaussian data diffused to t (EDM's
  c_skip, written for the score): the network learns only the data's departure from that Gaussian, and where it
  has seen no training points (the prior's tails at large σ_t) the score still pulls towards the data.

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

C_IN = ("none", "unit_variance")
C_OUT = ("none", "inv_sigma", "neg_inv_sigma", "gaussian_skip")


class ScoreModel(nn.Module):
    """``score(x, t)`` of ``backbone`` under ``sde`` (None: ``score(x)``, the backbone's output as is).

    The backbone is the only submodule (``backbone.*`` in the state dict); the SDE holds no parameters.
    """

    def __init__(self, backbone: nn.Module, sde: SDE | None, *, c_in: str = "none", c_out: str = "none") -> None:
        super().__init__()
        if c_in not in C_IN or c_out not in C_OUT:
            raise ConfigError(f"unknown preconditioning c_in={c_in!r}, c_out={c_out!r}")
        if sde is None and (c_in, c_out) != ("none", "none"):
            raise ConfigError("input/output scaling needs an SDE (its sigma_t)")
        if sde is not None and not sde.has_marginal and (c_in, c_out) != ("none", "none"):
            raise ConfigError(f"{sde!r} has no closed-form sigma_t: use c_in='none', c_out='none'")
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
        if not self.sde.has_marginal:
            return self.backbone(x, t, None)
        alpha, sigma = self.sde.marginal_coefficients(t.to(x.dtype))
        x_in = x * bcast(torch.rsqrt(alpha**2 + sigma**2), x) if self.c_in == "unit_variance" else x
        out = self.backbone(x_in, t, sigma)
        if self.c_out == "none":
            return out
        scale = -sigma.to(out.dtype) if self.c_out == "neg_inv_sigma" else sigma.to(out.dtype)
        out = out / bcast(scale, out)
        if self.c_out == "gaussian_skip":
            out = out - x * bcast(1 / (alpha**2 + sigma**2), x).to(out.dtype)
        return out


def build_score_model(spec, sde: SDE | None, dim: int | None = None) -> ScoreModel:
    """:class:`ScoreModel` of a ModelSpec under ``sde``."""
    from lcssm.models.build import build_model

    backbone = build_model(spec, dim, time_conditional=sde is not None)
    return ScoreModel(backbone, sde, c_in=spec.c_in, c_out=spec.c_out)
