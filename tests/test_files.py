"""Atomic writes and the metrics.json log (lcssm.files)."""

from __future__ import annotations

import json
import math

import pytest

from lcssm import files
from lcssm.files import append_metrics, atomic_write_bytes, atomic_write_text, read_metrics


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", fail)  # the new content is written but never reaches the disk
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"third")
    assert path.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "f.txt", "x")


def test_metrics_log_appends_one_record_per_call(tmp_path):
    assert read_metrics(tmp_path) == {}
    append_metrics(tmp_path, "sample", {"sampler": "pc", "fid": 1.5})
    append_metrics(tmp_path, "bpd", {"bpd": 2.0, "se": math.nan, "where": tmp_path})
    log = append_metrics(tmp_path, "sample", {"sampler": "ode", "fid": 2.5})
    assert [r["sampler"] for r in log["sample"]] == ["pc", "ode"]
    on_disk = read_metrics(tmp_path)
    assert on_disk["sample"] == log["sample"] and on_disk["bpd"][0]["where"] == str(tmp_path)
    assert math.isnan(on_disk["bpd"][0]["se"])


@pytest.mark.parametrize("content", ["{not json", '{"sample": {"pc": {}}}', "[1, 2]"])
def test_a_broken_metrics_file_is_kept_aside_not_lost(tmp_path, content):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.warns(UserWarning, match="metrics.json.corrupt"):
        log = append_metrics(tmp_path, "fid", {"fid": 3.0})
    assert log == {"fid": [{"fid": 3.0}]}
    assert (tmp_path / "metrics.json.corrupt").read_text() == content
    assert json.loads((tmp_path / "metrics.json").read_text()) == log
