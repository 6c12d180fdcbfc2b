"""The training loop: exact resume after SIGKILL, fallback past a corrupt checkpoint, the non-finite guard, EMA,
warmup, clipping, callbacks, run-directory rules and the batch helpers."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lcssm.errors import CheckpointError, ConfigError, LcssmError
from lcssm.models import EnergyMLP
from lcssm.objectives import dsm
from lcssm.training.batches import sampler_batches, step_seed, tensor_batches
from lcssm.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from lcssm.training.config import TrainConfig
from lcssm.training.loop import NonFiniteLossError, PeriodicCallback, train

DRIVER = Path(__file__).with_name("train_driver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DATA = torch.randn(200, 2, generator=torch.Generator().manual_seed(5))


def _driver(*args: str) -> list[str]:
    return [sys.executable, str(DRIVER), *args]


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    for i, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), f"optimizer state {i}.{k}"
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"]


def _metric_losses(run: Path) -> list[tuple]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r.get("event")) for r in recs]


# ----------------------------------------------------------------------------------------- exact resume
def test_kill_and_resume_is_bit_exact(tmp_path):
    """A run SIGKILLed between checkpoints and resumed ends with the parameters, EMA, optimizer state and loss
    log of an uninterrupted run, bit for bit (the loss is DSM, so the per-step noise must be replayed too)."""
    common = ["--steps", "100", "--ckpt-every", "10", "--keep-last", "2", "--log-every", "4"]
    straight = subprocess.Popen(_driver("--out", str(tmp_path / "straight"), *common), env=ENV)
    victim_dir = tmp_path / "killed"
    victim = subprocess.Popen(_driver("--out", str(victim_dir), *common, "--sleep", "0.03"), env=ENV)
    deadline = time.monotonic() + 120
    while not any(s >= 20 for s, _ in list_checkpoints(victim_dir)):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(random.uniform(0.05, 0.3))  # somewhere between checkpoints
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = max(s for s, _ in list_checkpoints(victim_dir))
    assert killed_at < 100
    resumed = subprocess.run(_driver("--out", str(victim_dir), *common, "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert straight.wait(timeout=120) == 0

    ref = tmp_path / "straight"
    _assert_same_state(load_checkpoint(checkpoint_path(ref, 100)), load_checkpoint(checkpoint_path(victim_dir, 100)))
    assert (ref / "loss.csv").read_text() == (victim_dir / "loss.csv").read_text()
    assert len((ref / "loss.csv").read_text().splitlines()) == 101
    assert _metric_losses(ref) == _metric_losses(victim_dir)
    assert [s for s, _ in list_checkpoints(victim_dir)] == [90, 100]  # keep_last = 2


def _data_batches(nan_steps: tuple[int, ...] = ()):
    batches = tensor_batches(DATA, 32, 0)

    def batch_fn(step: int, rank: int, world: int) -> torch.Tensor:
        x = batches(step, rank, world)
        return torch.full_like(x, math.nan) if step + 1 in nan_steps else x

    return batch_fn


def _dsm_loss(model, x, g):
    loss = dsm(model, x, 0.3, generator=g)
    return loss, {"sigma": torch.full_like(loss, 0.3), "t": torch.linspace(0, 1, len(loss))}


def _train(out: Path, *, nan_steps: tuple[int, ...] = (), callbacks=(), resume: bool = False, overwrite=False,
           **cfg_kw):
    kw = {"steps": 12, "batch_size": 32, "lr": 1e-2, "ema_decay": 0.8, "ckpt_every": 4, "log_every": 3,
          "device": "cpu", "warmup": 3, **cfg_kw}
    torch.manual_seed(0)
    return train(EnergyMLP(hidden=8), _dsm_loss, _data_batches(nan_steps), TrainConfig(**kw), out,
                 resume=resume, callbacks=callbacks, progress=False, overwrite=overwrite,
                 run_config={"name": "t", "path": Path("/x")})


def test_truncated_newest_checkpoint_resume_falls_back_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    first = _train(run)
    params = {k: v.clone() for k, v in first.model.state_dict().items()}
    log_before = (run / "loss.csv").read_text()
    newest = checkpoint_path(run, 12)
    newest.write_bytes(newest.read_bytes()[:-200])
    with caplog.at_level(logging.WARNING):
        again = _train(run, resume=True)
    assert again.start_step == 8
    assert any("ckpt_00000012.pt" in r.getMessage() and "SHA-256" in r.getMessage() for r in caplog.records)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert (run / "loss.csv").read_text() == log_before
    load_checkpoint(newest)  # rewritten, intact


# ------------------------------------------------------------------------------------------ non-finite
def test_injected_nan_stops_with_exit_code_3_and_an_intact_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(_driver("--out", str(run), "--steps", "30", "--ckpt-every", "5", "--nan-at-step", "8",
                                  "--max-nonfinite", "3"), env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "3 consecutive steps (steps 8-10" in proc.stderr and "ckpt_00000005.pt" in proc.stderr
    assert [s for s, _ in list_checkpoints(run)] == [5]  # step 10's checkpoint was not written
    state = load_checkpoint(checkpoint_path(run, 5))  # checksum verified
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bad = [e for e in events if e.get("event") == "nonfinite"]
    assert [e["step"] for e in bad] == [8, 9, 10] and [e["streak"] for e in bad] == [1, 2, 3]
    assert bad[0]["loss"] == "nan" and bad[0]["diagnostics"]["n_nonfinite_samples"] == 32
    assert bad[0]["diagnostics"]["sigma"]["at_nonfinite"][:2] == pytest.approx([0.3, 0.3])  # float32
    assert "step 8: non-finite loss" in proc.stderr


def test_nonfinite_step_updates_nothing_and_the_run_continues(tmp_path):
    snapshots = {}

    def snap(step, state):
        snapshots[step] = (
            {k: v.clone() for k, v in state.model.state_dict().items()},
            {k: v.clone() for k, v in state.ema_model.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in state.optimizer.state_dict()["state"].items()},
        )

    result = _train(tmp_path / "run", nan_steps=(5, 6), callbacks=[snap], max_nonfinite=3, steps=8, ckpt_every=0)
    assert math.isnan(result.losses[4]) and math.isnan(result.losses[5]) and math.isfinite(result.losses[6])

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    for step in (5, 6):
        model, ema, opt = snapshots[step]
        assert same(model, snapshots[4][0]) and same(ema, snapshots[4][1])
        assert all(same(opt[i], snapshots[4][2][i]) for i in opt)
    assert not same(snapshots[7][0], snapshots[4][0])  # training went on
    assert snapshots[7][2][0]["step"].item() == 5  # Adam counted 5 real updates in 7 steps


def test_nonfinite_error_is_an_lcssm_error_with_exit_code_3(tmp_path):
    with pytest.raises(NonFiniteLossError) as e:
        _train(tmp_path / "run", nan_steps=(2, 3), max_nonfinite=2)
    assert isinstance(e.value, LcssmError) and e.value.exit_code == 3 and e.value.step == 3
    assert e.value.checkpoint is None and "no checkpoint was written" in str(e.value)


# ------------------------------------------------------------------------------------- loop mechanics
def test_warmup_ema_and_logs(tmp_path):
    snaps = []
    result = _train(tmp_path / "run", steps=6, warmup=4, log_every=1, ema_decay=0.7,
                    callbacks=[lambda step, s: snaps.append({k: v.clone() for k, v in s.model.state_dict().items()})])
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    for r in recs:  # step k uses lr·min(1, k/warmup)
        assert r["lr"] == pytest.approx(1e-2 * min(1.0, r["step"] / 4), rel=1e-12)
        assert set(r) >= {"step", "loss", "grad_norm", "lr", "seconds", "samples_per_s"}
        assert r["loss"] == result.losses[r["step"] - 1]
    # EMA: e_0 = θ_0, e_k = 0.7·e_{k-1} + 0.3·θ_k
    torch.manual_seed(0)
    ema = {k: v.clone() for k, v in EnergyMLP(hidden=8).state_dict().items()}
    for snap in snaps:
        ema = {k: 0.7 * ema[k] + 0.3 * snap[k] for k in ema}
    for k, v in result.ema_model.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=1e-6, atol=1e-7)
    assert not torch.equal(result.ema_model.state_dict()["net.0.weight"], snaps[-1]["net.0.weight"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["name"] == "t" and config["path"] == "/x" and config["train"]["warmup"] == 4


def test_cosine_decay_follows_the_warmup(tmp_path):
    _train(tmp_path / "run", steps=8, warmup=2, lr_decay="cosine", log_every=1)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in recs:  # step k uses lr·min(1, k/warmup)·½(1 + cos(π(k − 1)/steps))
        k = r["step"]
        assert r["lr"] == pytest.approx(1e-2 * min(1.0, k / 2) * 0.5 * (1 + math.cos(math.pi * (k - 1) / 8)), rel=1e-12)
    assert recs[0]["lr"] == pytest.approx(5e-3, rel=1e-12) and recs[-1]["lr"] < 1e-2 * 0.04


def test_a_decayed_run_resumes_only_to_its_own_steps(tmp_path):
    run = tmp_path / "run"
    _train(run, steps=8, warmup=2, lr_decay="cosine", ckpt_every=4)
    with pytest.raises(ConfigError, match=r"train.steps: 8 in the run, 12 now \(with lr_decay 'cosine'"):
        _train(run, steps=12, warmup=2, lr_decay="cosine", resume=True)
    plain = tmp_path / "plain"  # without a decay, more steps train on
    _train(plain, steps=8, warmup=2)
    assert _train(plain, steps=12, warmup=2, resume=True).steps == 12


def test_ema_off_means_the_ema_model_is_the_model(tmp_path):
    result = _train(tmp_path / "run", ema_decay=0.0, steps=2)
    assert result.ema_model is result.model
    assert load_checkpoint(checkpoint_path(tmp_path / "run", 2))["ema"] is None


def test_grad_clip_bounds_the_applied_gradient(tmp_path):
    applied = []

    def grads(step, state):
        applied.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in state.model.parameters()
                                                             if p.grad is not None])).item())

    result = _train(tmp_path / "run", grad_clip=0.05, steps=4, callbacks=[grads])
    assert all(g > 0.05 for g in result.grad_norms)  # logged norms are before clipping
    # torch scales by clip/(norm + 1e-6); float32 norms of ~600 entries agree to ~1e-6 relative
    assert applied == pytest.approx([0.05 * g / (g + 1e-6) for g in result.grad_norms], rel=1e-5)


def test_callbacks_do_not_change_training(tmp_path):
    calls = []

    def noisy(step, ema):
        calls.append(step)
        torch.randn(100)  # uses the global RNG; training must not notice
        random.random()

    plain = _train(tmp_path / "a", steps=7)
    with_cb = _train(tmp_path / "b", steps=7, callbacks=[PeriodicCallback(3, noisy)])
    assert calls == [3, 6, 7]
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, with_cb.model.state_dict()[k])
    with pytest.raises(ConfigError, match="every"):
        PeriodicCallback(0, noisy)


def test_run_directory_rules(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        fresh = _train(run, resume=True, steps=4)  # nothing to resume: starts at step 0
    assert fresh.start_step == 0 and "no checkpoint to resume from" in caplog.text
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume"):
        _train(run, steps=4)
    done = _train(run, resume=True, steps=4)  # finished run: nothing left to do
    assert done.start_step == 4 and done.losses == fresh.losses
    with pytest.raises(ConfigError, match="steps 2 is below the step 4"):
        _train(run, resume=True, steps=2)
    again = _train(run, overwrite=True, steps=4, ckpt_every=2)
    assert again.losses == fresh.losses and [s for s, _ in list_checkpoints(run)] == [2, 4]
    longer = _train(run, resume=True, steps=6, ckpt_every=2)  # extend a finished run
    assert longer.start_step == 4 and len(longer.losses) == 6


# ------------------------------------------------------------------------------------------ batches
def test_tensor_batches_epochs_shards_and_purity():
    data = torch.arange(10).float().unsqueeze(1)
    fn = tensor_batches(data, 4, seed=3)
    stream = torch.cat([fn(s) for s in range(5)]).squeeze(1).long()  # 20 rows = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch its own permutation
    for step in range(5):  # ranks split the same global batch
        assert torch.equal(torch.cat([fn(step, r, 2) for r in range(2)]), fn(step))
        assert torch.equal(fn(step), tensor_batches(data, 4, seed=3)(step))  # pure
    assert not torch.equal(stream, torch.cat([tensor_batches(data, 4, 4)(s) for s in range(5)]).squeeze(1).long())
    small = tensor_batches(data, 25, 0)(0)  # a batch larger than the data spans several epochs
    assert small.shape == (25, 1)
    with pytest.raises(ConfigError, match="batch_size 4 is not divisible by the world size 3"):
        fn(0, 0, 3)


def test_sampler_batches_shard_the_global_batch():
    def sample(n, g):
        return torch.randn(n, 2, generator=g)

    fn = sampler_batches(sample, 6, seed=1)
    assert torch.equal(torch.cat([fn(4, r, 3) for r in range(3)]), fn(4, 0, 1))
    assert not torch.equal(fn(4), fn(5))


def test_step_seed_is_a_pure_function_separating_steps_and_ranks():
    seeds = {step_seed(0, s, r) for s in range(100) for r in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert step_seed(7, 3, 1) == step_seed(7, 3, 1) != step_seed(8, 3, 1)
