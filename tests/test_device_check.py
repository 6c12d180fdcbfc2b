"""benchmarks/device_check.py runs end to end on a CPU (``--smoke``), refuses CUDA where there is none, and never
writes over a file it did not write. Nothing here needs a GPU; the timings are not checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"
SECTIONS = {"numerics", "train_step", "ddp", "samplers", "inception"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    tmp = tmp_path_factory.mktemp("device_check")
    out = tmp / "x.json"
    out.write_text('{"format": "lcssm-device-check-v1", "ok": false}\n')  # an earlier run's: replaced
    proc = _run("--device", "cpu", "--smoke", "--out", str(out), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text()), out


def test_smoke_run_writes_every_section(smoke):
    proc, record, _ = smoke
    assert record["ok"] is True
    assert set(record["sections"]) == SECTIONS
    assert all(s["ok"] is True for s in record["sections"].values())
    assert record["device"] == "cpu" and record["device_name"] and record["torch"]
    for title in ("1. float32 numerics", "2. training-step time", "3. DDP", "4. sampler", "5. Inception"):
        assert f"## {title}" in proc.stdout


def test_smoke_numerics_cover_every_preset_within_tolerance(smoke):
    from lcssm.models.presets import MODEL_PRESETS

    numerics = smoke[1]["sections"]["numerics"]
    assert set(numerics["presets"]) == set(MODEL_PRESETS)
    assert "float64" in numerics["compared"]  # says what a CPU run compared
    for name, r in numerics["presets"].items():
        err = r["max_rel_error"]
        assert isinstance(err, float) and math.isfinite(err) and err <= 1e-4, (name, err)
        assert r["ref_max_abs"] > 0, name  # the zero-initialised layers were redrawn: a real comparison


def test_smoke_ddp_train_step_samplers_inception(smoke):
    sections = smoke[1]["sections"]
    ddp = sections["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert ddp["losses"] and all(isinstance(v, float) and math.isfinite(v) for v in ddp["losses"])
    assert ddp["buckets_reduced"] > 0 and ddp["params_changed"] and ddp["params_finite"]
    step = sections["train_step"]
    assert set(step["objectives"]) == {"lcss", "dsm", "ssm_vr", "fdssm"}
    assert "no-op" in step["precision"]  # bf16 autocast does nothing on a CPU, and the record says so
    assert step["objectives"]["lcss"]["ratio_to_lcss"] == 1.0
    assert all(r["median_ms"] > 0 for r in step["objectives"].values())
    assert set(sections["samplers"]["samplers"]) == {"heun", "dpmpp_2m", "pc"}
    assert all(r["nfe"] > 0 and r["nfe_per_s"] > 0 for r in sections["samplers"]["samplers"].values())
    assert sections["inception"]["images_per_s"] > 0 and sections["inception"]["feature_dim"] == 2048


def test_smoke_run_replaced_its_own_earlier_file(smoke):
    assert smoke[1]["format"] == "lcssm-device-check-v1" and "settings" in smoke[1]


def test_cuda_without_cuda_exits_2_with_a_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _run("--device", "cuda", "--out", str(tmp_path / "x.json"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_foreign_file_is_not_overwritten(tmp_path):
    out = tmp_path / "x.json"
    out.write_text('{"mine": true}\n')
    proc = _run("--device", "cpu", "--smoke", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr
    assert out.read_text() == '{"mine": true}\n'


def test_bad_argument_exits_2(tmp_path):
    proc = _run("--device", "cpu", "--smoke", "--seed", "x", cwd=tmp_path)
    assert proc.returncode == 2
