"""``lcssm train`` / ``sample`` / ``bpd`` end to end (tiny settings) and their bad-input paths."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lcssm.cli import main

TINY = ["--steps", "30", "--batch-size", "128", "--hidden", "32", "--n-samples", "200", "--set", "sample.n_steps=20",
        "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "run"
    assert main(["train", "--data", "8gaussians", "--sde", "vp", "--objective", "lcss", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_the_documented_files(run_dir):
    for name in ("config.json", "loss.csv", "metrics.jsonl", "metrics.json", "loss.png", "samples.npy", "samples.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    samples = np.load(run_dir / "samples.npy")
    assert samples.shape == (200, 2) and samples.dtype == np.float32
    lines = (run_dir / "loss.csv").read_text().strip().splitlines()
    assert lines[0].startswith("step") and len(lines) == 31
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"][-1]["steps"] == 30 and np.isfinite(metrics["train"][-1]["final_loss"])
    pc = metrics["sample"][0]  # the sampling of the training run (sample tests append more)
    assert pc["sampler"] == "pc"
    assert pc["n"] == 200 and pc["nfe"] == 20 * 2 + 1
    assert np.isfinite(pc["energy_distance"]) and np.isfinite(pc["energy_distance_floor"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["sde"] == "vp" and config["dim"] == 2 and config["sample"]["n_steps"] == 20


@pytest.mark.parametrize(("sampler", "extra"), [
    ("ode", ["--rtol", "1e-3", "--atol", "1e-3"]),
    ("ald", ["--steps", "5", "--ald-steps-each", "2"]),
    ("pc", ["--predictor", "euler_maruyama", "--corrector", "none", "--batch-size", "30"]),
])
def test_sample_each_sampler(run_dir, tmp_path, capsys, sampler, extra):
    dest = tmp_path / f"{sampler}.npy"
    argv = ["sample", str(run_dir), "--sampler", sampler, "--n", "64", "--seed", "1", "--out", str(dest),
            "--no-progress", *extra]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    x = np.load(dest)
    assert x.shape == (64, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert info["sampler"] == sampler and info["nfe"] > 0
    last = json.loads((run_dir / "metrics.json").read_text())["sample"][-1]
    assert last["sampler"] == sampler and last["n"] == 64
    assert main(argv) == 0  # same seed, same samples
    np.testing.assert_array_equal(np.load(dest), x)


def test_bpd_writes_finite_likelihood(run_dir, capsys):
    assert main(["bpd", str(run_dir), "--n", "40", "--batch", "20", "--rtol", "1e-4", "--atol", "1e-4",
                 "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 40 and info["trace"] == "exact" and info["non_finite"] == 0
    assert np.isclose(info["bits_per_dim"], info["nll_nats"] / (2 * np.log(2)))
    assert json.loads((run_dir / "metrics.json").read_text())["bpd"][-1]["n"] == 40


def test_nonaffine_sde_on_a_point_file(tmp_path):
    """tanh SDE with the simulated center on 3-D points: samples of shape (n, 3), no 2-D figure."""
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "pts.npy"), "--sde", "tanh", "--center", "simulated",
                 "--out", str(out), *TINY, "--set", "n_sim_steps=20"]) == 0
    assert np.load(out / "samples.npy").shape == (200, 3)
    assert not (out / "samples.png").exists() and (out / "loss.png").exists()


def _exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(match, err), err


@pytest.mark.parametrize(("argv", "match"), [
    (["--center", "simulated", "--objective", "dsm"], "dsm needs"),
    (["--sde", "tanh"], "no closed-form marginal; use --center simulated"),
    (["--sde", "vpp"], "unknown SDE 'vpp'; valid: ve, vp, subvp, tanh"),
    (["--sde", "ve", "--beta-max", "3"], "bad parameters for SDE 've'"),
    (["--objective", "lcsss"], "unknown objective 'lcsss'"),
    (["--center", "mid"], "unknown center 'mid'"),
    (["--sampler", "ddim"], "unknown sampler 'ddim'; valid: pc, ode, ald"),
    (["--preset", "digits", "--sde", "ve"], "--sde applies to point data, not to --preset digits"),
    (["--data-dir", "imgs"], "--data-dir is an image option; it needs --preset NAME"),
    (["--sde", "tanh", "--center", "simulated", "--sampler", "ald"], "annealed Langevin needs"),
    (["--data", "missing.npy"], "does not exist"),
    (["--set", "sample.snr=0"], "snr must be > 0"),
])
def test_train_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, match):
    _exit_2(capsys, ["train", "--out", str(tmp_path / "r"), *TINY, *argv], match)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_sample_and_bpd_bad_inputs_exit_2_with_one_line(run_dir, tmp_path, capsys):
    _exit_2(capsys, ["sample", str(run_dir), "--sampler", "ddim", "--no-progress"], "unknown sampler 'ddim'")
    _exit_2(capsys, ["sample", str(run_dir), "--n", "0", "--no-progress"], "--n must be >= 1")
    _exit_2(capsys, ["sample", str(tmp_path / "nowhere")], "does not exist")
    (tmp_path / "empty").mkdir()
    _exit_2(capsys, ["sample", str(tmp_path / "empty")], "no checkpoint")
    _exit_2(capsys, ["bpd", str(tmp_path / "empty")], "no checkpoint")
    _exit_2(capsys, ["bpd", str(run_dir), "--trace", "hutch"], "unknown trace 'hutch'")
    np.save(tmp_path / "pts3.npy", np.zeros((10, 3), dtype=np.float32))
    _exit_2(capsys, ["bpd", str(run_dir), "--data", str(tmp_path / "pts3.npy")], "dimension 3, the model 2")
