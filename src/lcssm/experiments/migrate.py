"""Run directories of the previous format (``config.json`` without a ``format`` key).

Point-diffusion and toy runs saved every value of their configuration, so they are migrated to a run-spec dict
that :func:`~lcssm.experiments.spec.load_spec` completes (SDE parameters left at None then meant the SDE's defaults,
which is what it fills them with). This module imports nothing of the run spec. Image runs saved only their preset's
name plus overrides: their network, SDE, data scale, loss reduction and sampler settings came from the preset as it
was then, which no longer exists, so they are refused with a message naming what is missing. Nothing is read from
today's presets.
"""

from __future__ import annotations

from typing import Any

from lcssm.errors import ConfigError

__all__ = ["migrate", "migrate_weights"]

_SAMPLE_RENAMES = {"sampler": "name", "n": "n_samples", "eps": "t_min"}


def _old_kind(config: dict[str, Any]) -> str:
    if config.get("kind") == "image":
        return "image"
    if config.get("kind") == "points":
        return "points"
    if config.get("command") == "toy":
        return "toy"
    return "unknown"


def migrate(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The run-spec sections of an old-format config as plain data (no ``format`` key; the SDE section holds only
    the parameters the run set), for :func:`lcssm.experiments.spec.load_spec` to complete and build; ConfigError
    naming what it lacks when that cannot be done."""
    kind = _old_kind(config)
    if kind == "image":
        raise ConfigError(
            f"{where} is an image run of the previous format: its config.json names preset "
            f"{config.get('preset')!r} but not the network architecture, SDE parameters, data scale, loss reduction "
            "or sampler settings it was trained with, and lcssm no longer reads them from today's presets. "
            "Retrain it with this lcssm (lcssm train --preset NAME ...)")
    if kind == "unknown":
        raise ConfigError(f"the config of {where} is neither a run spec (no 'format' key) nor a point or toy run of "
                          "the previous format")
    try:
        return _points(config) if kind == "points" else _toy(config)
    except KeyError as e:
        raise ConfigError(f"the previous-format config of {where} lacks the key {e.args[0]!r}") from None


def _sde(config: dict[str, Any]) -> dict[str, Any]:
    """The SDE section: its name and the parameters the run set (None then meant the SDE's default)."""
    params = {k: config.get(k) for k in ("sigma_min", "sigma_max", "beta_min", "beta_max")
              if config.get(k) is not None}
    return {"name": config["sde"], **params}


def _points(c: dict[str, Any]) -> dict[str, Any]:
    sde = _sde(c)
    marginal = c["sde"] != "tanh"
    sample = {_SAMPLE_RENAMES.get(k, k): v for k, v in c["sample"].items()}
    return {
        "command": "train",
        "data": {"kind": "points", "source": c["data"], "shape": [c["dim"]]},
        "objective": {"name": c["objective"], "gamma": c["gamma"], "antithetic": c["antithetic"],
                      "n_noise": c["n_noise"], "fd_eps": c["fd_eps"], "center": c["center"],
                      "weighting": c["weighting"], "t_min": c["t_eps"], "sigma_s": c["sigma_s"],
                      "n_sim_steps": c["n_sim_steps"]},
        "sde": sde,
        "model": {"arch": "score_mlp", "hidden": c["hidden"], "n_hidden": c["n_hidden"], "activation": c["activation"],
                  "embedding": c["embedding"], "embed_dim": c["embed_dim"],
                  "c_in": "unit_variance" if marginal else "none", "c_out": "inv_sigma" if marginal else "none"},
        "sampler": sample, "train": c["train"],
    }


def _toy(c: dict[str, Any]) -> dict[str, Any]:
    energy = c["model"] == "energy"
    return {
        "command": "toy",
        "data": {"kind": "points", "source": c["data"], "shape": [_dim(c["data"])]},
        "objective": {"name": c["objective"], "sigma": c["sigma"], "gamma": c["gamma"],
                      "antithetic": c["antithetic"], "n_noise": c["n_noise"], "fd_eps": c["fd_eps"]},
        "sde": {"name": "none"},
        "model": {"arch": "energy_mlp" if energy else "score_mlp", "hidden": c["hidden"],
                  "n_hidden": 2 if energy else 3, "activation": c["activation"]},
        "sampler": {"name": "langevin", "n_samples": c["n_samples"], "langevin_steps": c["langevin_steps"],
                    "langevin_step_size": c["langevin_step_size"], "init": c["init"]},
        "train": c["train"],
    }


def _dim(source: str) -> int:
    """The dimension of a toy run's data (its config did not record it)."""
    from lcssm.experiments.points import DataSource

    return DataSource(source).dim


def migrate_weights(config: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """State-dict keys of an old-format run renamed to the :class:`~lcssm.models.precond.ScoreModel` layout
    (``backbone.*``); weights of a current run are returned as they are."""
    if "format" in config:
        return weights
    kind = _old_kind(config)
    if kind == "points":  # PointScoreModel.net was the ScoreMLP
        return {"backbone." + k.removeprefix("net."): v for k, v in weights.items()}
    if kind == "toy":  # the toy model was the backbone itself
        return {"backbone." + k: v for k, v in weights.items()}
    return weights
