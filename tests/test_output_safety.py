"""Nothing a user has is overwritten or lost, and no run ends in silence: each row of the table in the issue
"Nothing a user has is ever lost" as a test (the signal rows are in test_preemption.py)."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcssm.cli import main
from lcssm.files import RUN_MARKER
from lcssm.training.checkpoint import list_checkpoints

TINY = ["--steps", "20", "--batch-size", "64", "--hidden", "16", "--n-samples", "50", "--n-steps", "5",
        "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _exit_2(capsys, argv: list[str], words: str) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # an argparse error
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", "--data", "2spirals", "--out", str(out), *TINY]) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_dir_is_marked_and_export_never_writes_over_its_config_or_checkpoints(run_dir, capsys, tmp_path):
    assert (run_dir / RUN_MARKER).is_file()
    before = _snapshot(run_dir)
    ckpt = list_checkpoints(run_dir)[-1][1]
    for target in (run_dir / "config.json", ckpt, run_dir / "checkpoints" / "new.safetensors"):
        for extra in ([], ["--overwrite"]):
            _exit_2(capsys, ["export", str(run_dir), "--file", str(target), *extra], "never writes over a run's")
    assert _snapshot(run_dir) == before
    dest = tmp_path / "ema.safetensors"
    assert main(["export", str(run_dir), "--file", str(dest)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(ckpt.stat().st_mode)
    _exit_2(capsys, ["export", str(run_dir), "--file", str(dest)], "exists; pass --overwrite")
    assert main(["export", str(run_dir), "--file", str(dest), "--overwrite"]) == 0


def test_out_refuses_a_foreign_non_empty_directory_and_an_empty_name(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "config"}')
    (mine / "loss.csv").write_text("my,data\n")
    before = _snapshot(mine)
    monkeypatch.chdir(mine)
    for out in (".", str(mine)):
        _exit_2(capsys, ["toy", "--steps", "5", "--out", out, "--no-progress"], "lcssm did not write")
        _exit_2(capsys, ["train", "--steps", "5", "--out", out, "--no-progress"], "lcssm did not write")
    _exit_2(capsys, ["toy", "--steps", "5", "--out", "", "--no-progress"], "--out must name a directory")
    assert _snapshot(mine) == before and not (mine / RUN_MARKER).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["toy", "--steps", "3", "--n-samples", "20", "--langevin-steps", "2", "--out", str(empty),
                 "--no-progress"]) == 0  # an empty directory is fine
    assert (empty / RUN_MARKER).is_file()


def test_resume_refuses_another_experiment_and_keeps_the_config(run_dir, capsys):
    config = (run_dir / "config.json").read_bytes()
    err = _exit_2(capsys, ["train", "--data", "checkerboard", "--objective", "dsm", "--out", str(run_dir), "--resume",
                           *TINY], "these settings differ")
    assert "data.source: '2spirals' in the run, 'checkerboard' now" in err and "objective.name: 'lcss'" in err
    err = _exit_2(capsys, ["train", "--data", "2spirals", "--out", str(run_dir), "--resume",
                           *[a if a != "16" else "32" for a in TINY]], "model.hidden: 16 in the run, 32 now")
    err = _exit_2(capsys, ["toy", "--out", str(run_dir), "--resume", "--steps", "20", "--no-progress"],
                  "command: 'train' in the run, 'toy' now")
    assert (run_dir / "config.json").read_bytes() == config
    # what may change does: more steps continue the same run
    assert main(["train", "--data", "2spirals", "--out", str(run_dir), "--resume",
                 *[a if a != "20" else "25" for a in TINY]]) == 0
    assert max(s for s, _ in list_checkpoints(run_dir)) == 25


def test_sample_outputs_name_their_sampler_and_never_replace_each_other(run_dir, capsys, tmp_path):
    trained = np.load(run_dir / "samples.npy")
    paths = []
    for sampler in ("ode", "ode", "pc"):
        capsys.readouterr()
        assert main(["sample", str(run_dir), "--sampler", sampler, "--n-samples", "30", "--rtol", "1e-2", "--atol",
                     "1e-2", "--n-steps", "3", "--no-progress"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["file"].endswith(".npy") and Path(record["figure"]).is_file()
        paths.append(record["file"])
    assert [Path(p).name for p in paths] == ["ode_001.npy", "ode_002.npy", "pc_001.npy"]
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), trained)  # the training run's are kept
    _exit_2(capsys, ["sample", str(run_dir), "--file", str(tmp_path / "s.npz")], "saved as .npy")
    _exit_2(capsys, ["sample", str(run_dir), "--file", str(tmp_path)], "is a directory")
    capsys.readouterr()
    dest = tmp_path / "s.npy"
    assert main(["sample", str(run_dir), "--file", str(dest), "--n-samples", "10", "--n-steps", "2",
                 "--no-progress"]) == 0
    assert f"wrote {dest} and {dest.with_suffix('.png')}" in capsys.readouterr().err
    assert np.load(dest).shape == (10, 2)


def test_bad_inputs_are_one_line(tmp_path, capsys):
    text = tmp_path / "points.npy"
    text.write_text("0.1, 0.2\n0.3, 0.4\n")
    err = _exit_2(capsys, ["toy", "--data", str(text), "--out", str(tmp_path / "r")], "is not a .npy array file")
    assert "allow_pickle" not in err
    _exit_2(capsys, ["train", "--steps", "0", "--out", str(tmp_path / "r")], "train.steps must be >= 1")
    _exit_2(capsys, ["train", "--preset", "digit"], "unknown model preset 'digit'")
    _exit_2(capsys, ["train", "--steps", "1e3x"], "expects an int")
    assert not (tmp_path / "r").exists()


def test_sampling_a_toy_run_works_and_bpd_says_why_not(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--steps", "3", "--n-samples", "20", "--langevin-steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["sample", str(out), "--n-samples", "10", "--no-progress"]) == 0  # its own sampler: langevin
    _exit_2(capsys, ["bpd", str(out)], "has no SDE")
    _exit_2(capsys, ["sample", str(out), "--sampler", "pc"], "does not apply to a run without an SDE")
    _exit_2(capsys, ["sample", str(tmp_path)], "holds no checkpoint")


def test_skipped_images_are_one_line_warnings(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    proc = subprocess.run([sys.executable, "-m", "lcssm", "train", "--preset", "tiny", "--data", str(folder),
                           "--resolution", "8", "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--out",
                           str(tmp_path / "run"), "--no-progress"], env=ENV, capture_output=True, text=True,
                          timeout=300)  # in a process of its own: pytest shows warnings its own way
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warnings and all(line.startswith("lcssm train: warning: skipping unreadable image") for line in warnings)
    assert all("broken.png" in line for line in warnings)


def _limited(limit_bytes: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return set_limit


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics")
def test_out_of_memory_is_one_line_and_leaves_no_empty_run(tmp_path):
    """As with ``ulimit -v 4000000``: a batch that cannot be allocated, and a sample set that cannot be held."""
    cmd = [sys.executable, "-m", "lcssm"]
    out = tmp_path / "oom"
    proc = subprocess.run([*cmd, "train", "--data", "checkerboard", "--batch-size", "200000000", "--steps", "2",
                           "--out", str(out), "--no-progress"], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(4_000_000 * 1024))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "out of memory in training step 1 at batch size 200000000" in errors[0]
    assert "--batch-size" in errors[0] and not out.exists()
    run = tmp_path / "small"
    assert main(["train", "--data", "checkerboard", "--out", str(run), *TINY]) == 0
    began = time.monotonic()
    proc = subprocess.run([*cmd, "sample", str(run), "--n-samples", "500000000", "--no-progress"], env=ENV,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(4_000_000 * 1024))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "500,000,000 samples" in proc.stderr and "--n-samples" in proc.stderr
    assert time.monotonic() - began < 120  # refused before sampling, not after hours


def test_the_lcssm_command_stops_on_sigterm_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lcssm", "train", "--data", "checkerboard", "--steps", "100000",
                             "--batch-size", "64", "--hidden", "16", "--out", str(out), "--no-progress"], env=ENV,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lcssm train: stopped by SIGTERM after step") and "--resume" in last
    step = int(last.split("after step ")[1].split()[0])
    assert [s for s, _ in list_checkpoints(out)] == [step]
    assert len((out / "loss.csv").read_text().splitlines()) == step + 1
