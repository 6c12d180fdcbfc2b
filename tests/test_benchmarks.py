"""The sampling-batch benchmark runs end to end on a tiny network and prints one row per batch size (its timings
are not checked: benchmarks measure, tests do not time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sample_batch.py"


def test_bench_sample_batch_prints_a_row_per_batch(capsys):
    spec = importlib.util.spec_from_file_location("bench_sample_batch", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--preset", "tiny", "--batches", "4,2", "--images", "4", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["2", "4"]
    assert rows[-1].split("|")[4].strip().startswith("1 [1, 1]")  # the largest batch against itself
