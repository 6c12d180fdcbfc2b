"""The residual score MLP for point data (``model.arch = res_mlp``)."""

from __future__ import annotations

import pytest
import torch

from lcssm.config import apply_overrides
from lcssm.errors import ConfigError
from lcssm.experiments.pipeline import open_run, train_run
from lcssm.experiments.presets import point_spec, toy_spec
from lcssm.models.toy import ResidualScoreMLP


def test_blocks_start_as_the_identity_and_see_the_time():
    torch.manual_seed(0)
    net = ResidualScoreMLP(dim=3, hidden=16, n_blocks=3, embed_dim=8)
    x, t = torch.randn(5, 3), torch.rand(5)
    assert torch.allclose(net(x, t), net.out(net.inp(x)))  # zero-initialised W2: every block is the identity
    assert torch.allclose(net(x, t), net(x, 1 - t))  # ... so the time cannot matter yet
    torch.nn.init.normal_(net.blocks[1].fc2.weight)
    assert not torch.allclose(net(x, t), net(x, 1 - t))
    with pytest.raises(ValueError, match="time-conditional"):
        net(x)


def test_a_res_mlp_run_trains_and_reopens(tmp_path):
    spec = apply_overrides(point_spec(), ["model.arch=res_mlp", "model.n_hidden=2", "model.hidden=16",
                                          "train.steps=5", "train.batch_size=32", "sampler.n_samples=20",
                                          "sampler.n_steps=3"])
    metrics = train_run(spec, tmp_path / "run", progress=False)
    run = open_run(tmp_path / "run", "cpu")
    assert type(run.model.backbone).__name__ == "ResidualScoreMLP" and metrics["sample"]["n"] == 20
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    assert run.score_fn(x, t).shape == (4, 2)
    with pytest.raises(ConfigError, match="res_mlp is time-conditional"):
        apply_overrides(toy_spec(), ["model.arch=res_mlp"])
