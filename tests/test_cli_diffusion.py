"""``lcssm train`` / ``sample`` / ``bpd`` end to end (tiny settings) and their bad-input paths."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lcssm.cli import main

TINY = ["--steps", "30", "--batch-size", "128", "--hidden", "32", "--n-samples", "200", "--sampler", "pc",
        "--set", "sampler.n_steps=20", "--no-progress"]


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
    assert config["format"] == "lcssm-run-v2" and config["command"] == "train"
    assert config["sde"]["name"] == "vp" and config["data"]["shape"] == [2] and config["sampler"]["n_steps"] == 20
    assert config["data"]["source"] == "8gaussians" and config["objective"]["name"] == "lcss"
    assert config["model"]["hidden"] == 32 and config["train"]["steps"] == 30


@pytest.mark.parametrize(("sampler", "extra"), [
    ("ode", ["--rtol", "1e-3", "--atol", "1e-3"]),
    ("ald", ["--n-steps", "5", "--ald-steps-each", "2"]),
    ("pc", ["--predictor", "euler_maruyama", "--corrector", "none", "--sample-batch-size", "30"]),
])
def test_sample_each_sampler(run_dir, tmp_path, capsys, sampler, extra):
    dest = tmp_path / f"{sampler}.npy"
    argv = ["sample", str(run_dir), "--sampler", sampler, "--n-samples", "64", "--sample-seed", "1",
            "--file", str(dest), "--no-progress", *extra]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    x = np.load(dest)
    assert x.shape == (64, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert info["sampler"] == sampler and info["nfe"] > 0 and info["seed"] == 1 and info["file"] == str(dest)
    if sampler == "ald":
        assert info["n_steps"] == 5 and info["ald_steps_each"] == 2 and info["nfe"] == 5 * 2 + 1
    if sampler == "pc":  # one predictor step, no corrector, in batches of 30
        assert info["corrector"] == "none" and info["batch_size"] == 30 and info["nfe"] == 20 + 1
    last = json.loads((run_dir / "metrics.json").read_text())["sample"][-1]
    assert last["sampler"] == sampler and last["n"] == 64
    assert main(argv) == 2  # the file exists: refused, kept
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # same seed, same samples
    np.testing.assert_array_equal(np.load(dest), x)


def test_bpd_writes_finite_likelihood(run_dir, capsys):
    assert main(["bpd", str(run_dir), "--n", "40", "--batch-size", "20", "--rtol", "1e-4", "--atol", "1e-4",
                 "--t-min", "1e-4", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 40 and info["trace"] == "exact" and info["non_finite"] == 0
    assert info["t_min"] == 1e-4 and info["nfe"] > 0 and "eps" not in info and "nfe_mean" not in info
    assert np.isclose(info["bits_per_dim"], info["nll_nats"] / (2 * np.log(2)))
    assert json.loads((run_dir / "metrics.json").read_text())["bpd"][-1]["n"] == 40


def test_nonaffine_sde_on_a_point_file(tmp_path):
    """tanh SDE with the simulated center on 3-D points: samples of shape (n, 3), no 2-D figure; the run measures
    its noise table and is preconditioned with it as an affine run would be."""
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "pts.npy"), "--sde", "tanh", "--center", "simulated",
                 "--out", str(out), *TINY, "--set", "objective.n_sim_steps=20"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["n_sim_steps"] == 20 and config["data"]["shape"] == [3]
    assert (config["model"]["c_in"], config["model"]["c_out"]) == ("unit_variance", "stationary_skip")
    table = config["sde"]["table"]
    assert len(table["times"]) == len(table["sigma"]) > 100 and table["times"][-1] == 1.0
    assert np.load(out / "samples.npy").shape == (200, 3)
    assert not (out / "samples.png").exists() and (out / "loss.png").exists()


def _exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"lcssm {argv[0]}: error: "), err
    assert re.search(match, err), err


def _parser_error(command: str, message: str) -> str:
    """The one line of a parser error: ``lcssm CMD: error: MESSAGE (see lcssm CMD --help)``."""
    return f"^lcssm {command}: error: {re.escape(message)} \\(see lcssm {command} --help\\)$"


@pytest.mark.parametrize(("argv", "match"), [
    (["--center", "simulated", "--objective", "dsm"], "dsm needs"),
    (["--sde", "tanh", "--center", "marginal"], "no closed-form marginal; use --center local"),
    (["--sde", "vpp"], "--sde: .*must be one of ve, vp, subvp, tanh.*, got 'vpp'"),
    (["--sde", "ve", "--beta-max", "3"], "--beta-max: sde.beta_max does not apply to the 've' SDE"),
    (["--objective", "lcsss"], "--objective: .*must be one of exact_sm, .*, got 'lcsss'"),
    (["--center", "mid"], "--center: .*must be one of marginal, data, simulated, local, got 'mid'"),
    (["--sampler", "ddim"], "--sampler: .*must be one of pc, ode, pf_heun, ald, langevin, .*got 'ddim'"),
    (["--preset", "digits", "--hidden", "64"], "--hidden applies to point data, not to --preset digits"),
    (["--resolution", "16"], "--resolution is an image option; it needs --preset NAME"),
    (["--nf", "8"], "--nf is an image option; it needs --preset NAME"),
    (["--steps", "x"], _parser_error("train", "argument --steps: train.steps expects an int, got 'x'")),
    (["--sde", "tanh", "--center", "simulated", "--sampler", "ald"], "the ald sampler does not apply to a run with "
                                                                     "TanhSDE"),
    (["--sampler", "langevin"], "the langevin sampler does not apply to a run with VPSDE"),
    (["--data", "missing.npy"], "does not exist"),
    (["--set", "sampler.snr=0"], "sampler.snr must be > 0"),
    (["--set", "sample.snr=0"], "unknown config key 'sample'; valid keys: .*sampler"),  # the old section name
    (["--set", "center=data"], "unknown config key 'center'"),  # now objective.center
    (["--set", "objective.sigma=0.1"], "objective.sigma applies to runs without an SDE"),
])
def test_train_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, match):
    _exit_2(capsys, ["train", "--out", str(tmp_path / "r"), *TINY, *argv], match)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("argv", [["--holdout", "0.1"], ["--random-flip"], ["--strict"], ["--cache-dir", "c"],
                                  ["--sample-every", "5"], ["--n-grid", "4"], ["--grid-steps", "3"]])
def test_image_options_need_a_preset(tmp_path, capsys, argv):
    """Options of image data and image training are refused for point data, not silently ignored."""
    _exit_2(capsys, ["train", "--out", str(tmp_path / "r"), *TINY, *argv],
            f"{argv[0]} is an image option; it needs --preset NAME")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_sample_and_bpd_bad_inputs_exit_2_with_one_line(run_dir, tmp_path, capsys):
    _exit_2(capsys, ["sample", str(run_dir), "--sampler", "ddim", "--no-progress"],
            "must be one of pc, ode, pf_heun, ald, langevin, .*got 'ddim'")
    _exit_2(capsys, ["sample", str(run_dir), "--sampler", "langevin", "--no-progress"],
            "the langevin sampler does not apply to a run with VPSDE")
    _exit_2(capsys, ["sample", str(run_dir), "--n-samples", "0", "--no-progress"],
            "n_samples \\(--n-samples\\) must be >= 1, got 0")
    _exit_2(capsys, ["sample", str(run_dir), "--n-samples", "-1", "--no-progress"], "n_samples must be >= 0")
    _exit_2(capsys, ["sample", str(run_dir), "--t-min", "2", "--no-progress"], "t_min must lie in \\(0, 1\\)")
    _exit_2(capsys, ["sample", str(run_dir), "--set", "sampler.snr=0", "--no-progress"], "snr must be > 0")
    _exit_2(capsys, ["sample", str(run_dir), "--set", "train.lr=0.1"], "train.lr is not a sampler field")
    _exit_2(capsys, ["sample", str(run_dir), "--n-steps", "x"],
            _parser_error("sample", "argument --n-steps: n_steps expects an int, got 'x'"))
    _exit_2(capsys, ["fid", str(run_dir)], "is a points run; FID applies to image runs")
    _exit_2(capsys, ["sample", str(tmp_path / "nowhere")], "does not exist")
    (tmp_path / "empty").mkdir()
    _exit_2(capsys, ["sample", str(tmp_path / "empty")], "no checkpoint")
    _exit_2(capsys, ["bpd", str(tmp_path / "empty")], "no checkpoint")
    _exit_2(capsys, ["bpd", str(run_dir), "--trace", "hutch"], "unknown trace 'hutch'")
    _exit_2(capsys, ["bpd", str(run_dir), "--n", "1"], "--n: n must be >= 2")
    _exit_2(capsys, ["bpd", str(run_dir), "--t-min", "0"], "--t-min: t_min must be > 0")
    np.save(tmp_path / "pts3.npy", np.zeros((10, 3), dtype=np.float32))
    _exit_2(capsys, ["bpd", str(run_dir), "--data", str(tmp_path / "pts3.npy")], "dimension 3, the model 2")


@pytest.mark.parametrize("argv", [
    ["train", "--data-dir", "imgs"],  # now --data, shared with point runs
    ["train", "--sigma", "0.1"],  # a toy option
    ["train", "--n-step", "5"],  # no abbreviations
    ["sample", "RUN", "--n", "5"],  # now --n-samples
    ["sample", "RUN", "--steps", "5"],  # now --n-steps
    ["sample", "RUN", "--eps", "1e-3"],  # now --t-min
    ["bpd", "RUN", "--batch", "20"],  # now --batch-size
])
def test_unknown_flags_exit_2_with_one_line(tmp_path, capsys, argv):
    unknown = " ".join(argv[-2:])
    argv = [str(tmp_path / "r") if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "r"), *TINY]
    _exit_2(capsys, argv, _parser_error(argv[0], f"unrecognized arguments: {unknown}"))


@pytest.mark.parametrize("sde", ["tanh", "student"])
def test_a_non_affine_run_samples_with_every_sampler_it_can_and_refuses_the_others(sde, tmp_path, capsys):
    """The default non-affine recipe end to end on a few steps: noise table in the spec, the local center, pf_heun
    after training; then ode and pc, the likelihood through the probability-flow ODE with the exact prior, and the
    sigma-parametrised solvers refused in one line with exit 2."""
    out = tmp_path / "run"
    assert main(["train", "--data", "moons", "--sde", sde, "--steps", "20", "--batch-size", "64", "--hidden", "32",
                 "--n-samples", "100", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["center"] == "local" and config["sampler"]["name"] == "pf_heun"
    assert len(config["sde"]["table"]["sigma"]) > 100
    for argv in (["--sampler", "ode", "--rtol", "1e-3", "--atol", "1e-3"], ["--sampler", "pc", "--n-steps", "20"],
                 ["--sampler", "pf_heun", "--nfe", "9"]):
        assert main(["sample", str(out), *argv, "--n-samples", "50", "--no-progress"]) == 0
    assert main(["bpd", str(out), "--n", "10", "--rtol", "1e-3", "--atol", "1e-3", "--no-progress"]) == 0
    capsys.readouterr()
    for name in ("heun", "dpmpp_2m", "ald"):
        _exit_2(capsys, ["sample", str(out), "--sampler", name, "--n-samples", "5"], "use pc or ode or pf_heun")


def test_an_image_preset_with_a_non_affine_sde_trains_at_the_local_center(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--sde", "tanh", "--steps", "2", "--batch-size", "8", "--n-samples",
                 "0", "--set", "grids.every=0", "--set", "objective.n_sim_steps=5", "--out", str(out),
                 "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["center"] == "local" and config["sde"]["name"] == "tanh"
    assert config["model"]["c_out"] == "edm" and len(config["sde"]["table"]["alpha"]) > 100
