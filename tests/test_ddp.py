"""Data parallelism: ``torchrun --nproc_per_node=2`` on CPU (gloo) trains the same model as one process with
the doubled batch.

The comparison uses exact score matching (lcssm.objectives.exact_sm) on an EnergyMLP because it is a
noise-free loss: each rank draws its own noise by design (the per-step generator is seeded from
(seed, step, rank)), so a noisy loss such as DSM or LCSS would legitimately differ from a single-process run.
The energy model also exercises DDP with double backward (its score is ∇ₓf) and with a parameter that gets
no gradient (the output bias).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcssm.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint

DRIVER = Path(__file__).with_name("train_driver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 8


def _args(out: Path, batch: int) -> list[str]:
    return [str(DRIVER), "--out", str(out), "--steps", str(STEPS), "--batch-size", str(batch), "--objective",
            "exact_sm", "--data", "tensor", "--ema", "0.5", "--dump-params"]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_with_the_doubled_batch(tmp_path):
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            *_args(tmp_path / "ddp", 64)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    single = subprocess.run([sys.executable, *_args(tmp_path / "single", 64)], env=ENV, capture_output=True,
                            text=True, timeout=180)
    half = subprocess.run([sys.executable, *_args(tmp_path / "half", 32)], env=ENV, capture_output=True, text=True,
                          timeout=180)
    output, _ = ddp.communicate(timeout=180)
    assert ddp.returncode == 0, output
    assert single.returncode == 0 and half.returncode == 0, single.stderr + half.stderr

    rank0, rank1 = _params(tmp_path / "ddp" / "rank0_params.pt"), _params(tmp_path / "ddp" / "rank1_params.pt")
    for k in rank0:  # the same all-reduced gradients and optimizer on both ranks: identical bits
        assert torch.equal(rank0[k], rank1[k]), k

    # Tolerance: all-reduce sums the two ranks' gradients in another order than one process does (relative
    # error ~1e-7 per step); Adam moves each weight by at most lr = 1e-2 per step, so after 8 steps the
    # difference is ~8·1e-2·1e-6 < 1e-6. The run with half the batch is far outside it (checked below).
    single_p = _params(tmp_path / "single" / "rank0_params.pt")
    for k in rank0:
        torch.testing.assert_close(rank0[k], single_p[k], rtol=0, atol=1e-6)
    half_p = _params(tmp_path / "half" / "rank0_params.pt")
    assert max((rank0[k] - half_p[k]).abs().max().item() for k in rank0) > 1e-3

    # rank 0 alone logs and checkpoints; the logged loss is the mean over ranks
    ddp_log = (tmp_path / "ddp" / "loss.csv").read_text().splitlines()
    single_log = (tmp_path / "single" / "loss.csv").read_text().splitlines()
    assert ddp_log[0] == "step,loss" and len(ddp_log) == STEPS + 1
    ddp_loss = [float(line.split(",")[1]) for line in ddp_log[1:]]
    single_loss = [float(line.split(",")[1]) for line in single_log[1:]]
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5, abs=1e-7)
    assert [s for s, _ in list_checkpoints(tmp_path / "ddp")] == [STEPS]
    state = load_checkpoint(checkpoint_path(tmp_path / "ddp", STEPS))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    for k in rank0:
        assert torch.equal(state["model"][k], rank0[k])
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds


@pytest.mark.slow
def test_torchrun_ranks_share_one_image_cache(tmp_path):
    """Two ranks on an image folder with --cache-dir: local rank 0 decodes, rank 1 maps its file."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lcssm", "train",
         "--preset", "tiny", "--data", str(folder), "--resolution", "8", "--cache-dir", str(cache), "--steps",
         "2", "--batch-size", "4", "--sample-every", "0", "--out", str(tmp_path / "run"), "--no-progress"],
        env=ENV, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1
    assert not [p for p in cache.iterdir() if "tmp" in p.name]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    config = json.loads((tmp_path / "run" / "config.json").read_text())  # the run spec, written once by rank 0
    assert config["data"]["cache_dir"] == str(cache) and config["data"]["shape"] == [1, 8, 8]
    assert load_checkpoint(checkpoint_path(tmp_path / "run", 2))["world_size"] == 2
