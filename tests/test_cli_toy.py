"""``lcssm toy`` end to end (tiny settings) and its bad-input paths."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lcssm.cli import main

TINY = ["--steps", "30", "--batch-size", "128", "--n-samples", "300", "--langevin-steps", "20", "--hidden", "32",
        "--no-progress"]


@pytest.mark.parametrize("objective", ["lcss", "dsm", "ssm", "ssm_vr", "fdssm", "exact_sm"])
def test_toy_run_writes_every_file(tmp_path, objective, capsys):
    out = tmp_path / objective
    assert main(["toy", "--data", "checkerboard", "--objective", objective, "--out", str(out), *TINY]) == 0
    samples = np.load(out / "samples.npy")
    assert samples.shape == (300, 2) and samples.dtype == np.float32
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["train"]) == 1 and len(metrics["sample"]) == 1
    trained, sampled = metrics["train"][-1], metrics["sample"][-1]
    for record, key in [(trained, "train_seconds"), (sampled, "seconds"), (trained, "final_loss"),
                        (sampled, "energy_distance"), (sampled, "energy_distance_floor"), (sampled, "in_support"),
                        (sampled, "in_support_ceiling")]:
        assert key in record and np.isfinite(record[key]), key
    assert trained["steps"] == 30 and trained["objective"] == objective
    assert sampled["sampler"] == "mala" and sampled["n"] == 300 and sampled["nfe"] == 20 + 1
    assert 0 < sampled["acceptance_rate"] <= 1
    assert 0.0 <= sampled["in_support"] <= 1.0
    assert abs(sampled["in_support_ceiling"] - 0.9227) < 1e-3
    lines = (out / "loss.csv").read_text().strip().splitlines()
    assert lines[0].startswith("step") and len(lines) == 31
    for png in ("samples.png", "density.png", "loss.png"):
        assert (out / png).stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["objective"] == objective and printed["sample"] == sampled
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "lcssm-run-v2" and config["command"] == "toy" and config["sde"]["name"] == "none"
    assert config["objective"]["name"] == objective and config["model"]["arch"] == "energy_mlp"
    assert config["data"]["shape"] == [2] and config["sampler"]["n_samples"] == 300


def test_toy_point_file_any_dimension(tmp_path):
    pts = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    out = tmp_path / "run"
    assert main(["toy", "--data", str(tmp_path / "pts.npy"), "--model", "score_mlp", "--out", str(out), *TINY]) == 0
    assert np.load(out / "samples.npy").shape == (300, 3)
    assert not (out / "samples.png").exists()  # figures only for 2-D data
    sampled = json.loads((out / "metrics.json").read_text())["sample"][-1]
    assert "in_support" not in sampled and np.isfinite(sampled["energy_distance"])


def test_toy_is_reproducible(tmp_path):
    for name in ("a", "b"):
        assert main(["toy", "--objective", "lcss", "--seed", "3", "--out", str(tmp_path / name), *TINY]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy"))


# a parser error: "lcssm toy: error: MESSAGE (see lcssm toy --help)"
PARSER = r"^lcssm toy: error: {} \(see lcssm toy --help\)$"


@pytest.mark.parametrize("argv,match", [
    (["--objective", "lcsss"], "^lcssm toy: error: --objective: .*must be one of exact_sm, .*lcss, got 'lcsss'$"),
    (["--data", "checkers"], "unknown toy dataset 'checkers'"),
    (["--model", "flow"], "--model: .*must be one of energy_mlp, score_mlp"),
    (["--model", "energy"], "--model: .*must be one of energy_mlp, score_mlp, .*got 'energy'"),
    (["--preset", "big"], "--preset: unknown toy preset 'big'; valid: quick, paper"),
    (["--sigma", "0"], "sigma must be > 0"),
    (["--sigma", "-0.5"], "sigma must be > 0"),
    (["--sigma", "abc"], PARSER.format("argument --sigma: objective.sigma expects float or none, got 'abc'")),
    (["--steps", "2.5"], PARSER.format("argument --steps: train.steps expects an int, got '2.5'")),
    (["--n-noise", "0"], "n_noise must be >= 1"),
    (["--steps", "-1"], "steps"),
    (["--batch-size", "0"], "batch_size"),
    (["--lr", "0"], "lr"),
    (["--data", "missing.npy"], "does not exist"),
    (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
    (["--set", "sigma=abc"], "unknown config key 'sigma'; valid keys: .*objective"),  # keys are RunSpec dotted keys
    (["--set", "objective.sigma=abc"], "objective.sigma expects float or none, got 'abc'"),
    (["--set", "objective.sigma=0"], "objective.sigma must be > 0"),
    (["--set", "sigma"], "KEY=VALUE|key=value|="),
    (["--langevin-step-size", "0"], "langevin_step_size"),
])
def test_toy_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        code = main(["toy", "--out", str(tmp_path / "r"), *TINY, *argv])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("lcssm toy: error: "), err
    assert re.search(match, err), err
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--langevin-step", "0.1"],  # no abbreviations
                                  ["--model", "score_mlp", "--rtol", "1e-3"]])  # a sample option
def test_toy_unknown_flags_exit_2_with_one_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["toy", "--out", str(tmp_path / "r"), *TINY, *argv]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    flags = " ".join(argv[-2:] if len(argv) > 1 else argv)
    assert re.fullmatch(PARSER.format(re.escape(f"unrecognized arguments: {flags}")), err), err


@pytest.mark.parametrize("content", ["1,2\n3,x\n", "1,2,3\n4,5\n", "", "1,nan\n2,3\n"])
def test_toy_malformed_point_file_exit_2(tmp_path, capsys, content):
    (tmp_path / "bad.csv").write_text(content)
    code = main(["toy", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r"), *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0]
