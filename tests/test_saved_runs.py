"""Run directories written before lcssm's modules moved into packages open unchanged and sample bit-identically.

``tests/data/runs_v2`` holds a point run (VP, score MLP) and a ``tiny`` image run written by lcssm at commit bdccd1c
(format ``lcssm-run-v2``, the flat-module layout), with the samples that code drew from them (``expected/``). A
run stores names, never module paths, so today's code must read it and, given the same sampler options and seed,
draw the same samples: bit for bit on the CPU that drew them, and on another CPU (whose float32 kernels round
differently: up to 1e-6 of the largest value was seen on an AMD EPYC against files drawn on an Intel Xeon) to
1e-5 of the largest value, with 8-bit images at most one level apart in at most 1 % of their pixels. A change of
what is computed moves samples by a sizeable fraction of their scale.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lcssm.cli import main
from lcssm.experiments.pipeline import open_run

DATA = Path(__file__).parent / "data" / "runs_v2"

CASES = [
    ("points_v2", "heun", ["--sampler", "heun", "--nfe", "9", "--n-samples", "32"], "npy"),
    ("points_v2", "pc", ["--sampler", "pc", "--n-steps", "20", "--n-samples", "32"], "npy"),
    ("tiny_v2", "dpmpp_2m", ["--sampler", "dpmpp_2m", "--nfe", "5", "--n-samples", "4"], "npz"),
    ("tiny_v2", "pc", ["--sampler", "pc", "--n-steps", "5", "--n-samples", "4"], "npz"),
]


def _copy(run: str, tmp_path: Path) -> Path:
    out = tmp_path / run
    shutil.copytree(DATA / run, out)
    return out


@pytest.mark.parametrize("run", ["points_v2", "tiny_v2"])
def test_saved_run_opens_with_its_spec_and_weights(run, tmp_path):
    run_dir = _copy(run, tmp_path)
    opened = open_run(run_dir, "cpu")
    saved = json.loads((run_dir / "config.json").read_text())
    read = opened.spec.to_dict()
    for section, fields in saved.items():  # read whole, nothing filled in from today's presets
        assert read[section] == fields or {k: read[section][k] for k in fields} == fields, section
    assert read["model"].get("sigma_data") is None  # a field added since takes its default
    assert all(np.isfinite(p.detach().numpy()).all() for p in opened.model.parameters())


@pytest.mark.parametrize(("run", "sampler", "args", "ext"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_saved_run_samples_as_the_code_that_wrote_it(run, sampler, args, ext, tmp_path):
    run_dir = _copy(run, tmp_path)
    assert main(["sample", str(run_dir), *args, "--no-progress"]) == 0
    expected = np.load(DATA / "expected" / f"{run}_{sampler}_001.{ext}")
    got = np.load(run_dir / "samples" / f"{sampler}_001.{ext}")
    if ext == "npz":
        assert sorted(got.files) == sorted(expected.files)
        for key in expected.files:
            _assert_same_samples(got[key], expected[key])
    else:
        _assert_same_samples(got, expected)


def _assert_same_samples(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if expected.dtype == np.uint8:
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_a_kept_table_row_is_read_after_the_spec_gains_a_field(tmp_path):
    """docs/mnist/table3's rows (hours of CPU each) were kept before ``model.sigma_data`` existed; a request of
    today's spec, which holds that field at its default, still reads them instead of measuring again."""
    from lcssm.reproduce.reuse import cached_record

    kept = Path(__file__).parents[1] / "docs" / "mnist" / "table3" / "lcss.json"
    path = tmp_path / "lcss.json"
    shutil.copy(kept, path)
    request = json.loads(kept.read_text())["request"]
    request["spec"]["model"]["sigma_data"] = None

    def measure():
        raise AssertionError("the kept row was measured again")

    record, read = cached_record(path, request, measure)
    assert read and record == json.loads(kept.read_text())["record"]
    request["spec"]["model"]["sigma_data"] = 0.5  # another spec is another request
    with pytest.raises(AssertionError, match="measured again"):
        cached_record(path, request, measure)
