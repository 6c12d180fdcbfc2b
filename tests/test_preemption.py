"""A run survives SIGINT, SIGTERM and SIGUSR1: the step in progress finishes, a checkpoint is written, the logs are
flushed, one line says how to go on, the exit code is 130 / 143 / 143, and ``--resume`` ends bit-identical to an
uninterrupted run; the same under torchrun with two gloo ranks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lcssm.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint

DRIVER = Path(__file__).with_name("train_driver.py")
ENV = {"OMP_NUM_THREADS": "1", **{k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}}
COMMON = ["--steps", "60", "--log-every", "4", "--ckpt-every", "0"]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for part in ("model", "ema", "optimizer"):
        assert repr(sa[part].keys()) == repr(sb[part].keys())
    for part in ("model", "ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    assert sa["history"]["loss"].tolist() == sb["history"]["loss"].tolist()


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *COMMON], env=ENV, check=True, timeout=300)
    return out


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 143)])
def test_a_signal_checkpoints_and_resume_is_bit_exact(tmp_path, straight, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(DRIVER), "--out", str(out), *COMMON, "--sleep", "0.05",
                             "--ready-at", "10"], env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "ready", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} after step" in lines[0], err
    steps = [s for s, _ in list_checkpoints(out)]
    assert len(steps) == 1 and 10 <= steps[0] < 60, steps  # ckpt_every 0: the only checkpoint is the signal's
    assert str(checkpoint_path(out, steps[0])) in lines[0]
    assert len((out / "loss.csv").read_text().splitlines()) == steps[0] + 1  # every row flushed, header included
    resumed = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *COMMON, "--resume"], env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _same_weights(checkpoint_path(straight, 60), checkpoint_path(out, 60))
    assert (straight / "loss.csv").read_text() == (out / "loss.csv").read_text()


def test_torchrun_ranks_stop_at_one_step_with_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    args = ["--out", str(out), "--steps", "60", "--log-every", "4", "--batch-size", "64", "--dump-params"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(DRIVER)]
    proc = subprocess.Popen([*run, *args, "--sleep", "0.05", "--ready-at", "8"], env=ENV, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(out / "ready", proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, err = proc.communicate(timeout=180)
    steps = [s for s, _ in list_checkpoints(out)]
    assert len(steps) == 1 and 8 <= steps[0] < 60, (steps, err)
    assert err.count("stopped by SIGTERM after step") >= 1, err
    assert load_checkpoint(checkpoint_path(out, steps[0]))["world_size"] == 2
    resumed = subprocess.run([*run, *args, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    subprocess.run([*run, *[a if a != str(out) else str(straight) for a in args]], env=ENV, check=True,
                   capture_output=True, timeout=300)
    _same_weights(checkpoint_path(straight, 60), checkpoint_path(out, 60))
    for rank in (0, 1):
        a, b = torch.load(out / f"rank{rank}_params.pt"), torch.load(straight / f"rank{rank}_params.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
