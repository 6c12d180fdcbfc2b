"""Tail metrics of samples against data: how far out the samples go and how the far tail is shaped.

Bulk metrics (k-NN precision / recall, :mod:`lcssm.metrics.structure`) barely see the 1 % of points that make a
heavy tail. These look at the radius ``r = ‖x‖`` only:

- ``q{q}_rel_error``: the relative error of the samples' radius quantile at the level q (0.99 and 0.999 by default)
  against the data's, ``q_samples/q_data − 1`` (negative: tails too light);
- ``tail_mass``: the fraction of samples beyond the data's 0.99 radius quantile (0.01 for a perfect sampler);
- ``tail_ks``: the two-sample Kolmogorov–Smirnov distance between the radii of samples and data beyond the data's
  0.99 quantile (the shape of the far tail, whatever its mass; :func:`scipy.stats.ks_2samp`) with its p-value.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp
from torch import Tensor

__all__ = ["tail_metrics"]


def tail_metrics(samples: Tensor, data: Tensor, *, levels: tuple[float, ...] = (0.99, 0.999)) -> dict[str, float]:
    """Tail metrics of ``samples`` against ``data`` (both (n, d); module docstring)."""
    r_s = samples.double().flatten(1).norm(dim=1).numpy()
    r_d = data.double().flatten(1).norm(dim=1).numpy()
    r_s = r_s[np.isfinite(r_s)]
    out: dict[str, float] = {}
    for q in levels:
        out[f"q{q:g}_rel_error"] = float(np.quantile(r_s, q) / np.quantile(r_d, q) - 1)
    cut = float(np.quantile(r_d, 0.99))
    far_s, far_d = r_s[r_s > cut], r_d[r_d > cut]
    out["tail_mass"] = float(len(far_s) / len(r_s))
    if len(far_s) >= 2 and len(far_d) >= 2:
        test = ks_2samp(far_s, far_d)
        out["tail_ks"], out["tail_ks_p"] = float(test.statistic), float(test.pvalue)
    else:
        out["tail_ks"], out["tail_ks_p"] = 1.0, 0.0
    return out
