"""Metrics over samples and data, one module per kind:

* :mod:`~lcssm.metrics.distances` — energy distance, MMD, Fréchet distance (FID), KID and Inception Score;
* :mod:`~lcssm.metrics.structure` — k-NN precision / recall, density / coverage, histogram distance, strays;
* :mod:`~lcssm.metrics.features` — the features these are computed on (the digits classifier, FID Inception-v3);
* :mod:`~lcssm.metrics.inception` — the FID Inception-v3 network and the reader of its weights;
* :mod:`~lcssm.metrics.likelihood` — log-likelihood and bits/dim through the probability-flow ODE.

This package's namespace is its public API; code inside lcssm imports from the defining module.
"""

from lcssm.metrics.distances import (
    energy_distance,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid,
    median_bandwidth,
    mmd_rbf,
)
from lcssm.metrics.features import digits_features, fid_features
from lcssm.metrics.likelihood import bits_per_dim, dequantize, log_likelihood
from lcssm.metrics.structure import density_coverage, histogram_distance, knn_precision_recall, outside_fraction

__all__ = [
    "bits_per_dim",
    "density_coverage",
    "dequantize",
    "digits_features",
    "energy_distance",
    "feature_statistics",
    "fid_features",
    "fid_from_features",
    "frechet_distance",
    "histogram_distance",
    "inception_score",
    "kid",
    "knn_precision_recall",
    "log_likelihood",
    "median_bandwidth",
    "mmd_rbf",
    "outside_fraction",
]
