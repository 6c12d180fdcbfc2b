"""The image pipeline (lcssm.experiments.pipeline on the ``images`` kind, ``lcssm fid``): train -> sample -> bpd ->
fid on the digits with the ``tiny`` preset, resume, image folders, NCSNv2 + annealed Langevin, and the bad-input
paths."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcssm.cli import main
from lcssm.config import apply_overrides
from lcssm.data.digits import load_digits
from lcssm.data.levels import ImageData, levels_to_float, to_uint8
from lcssm.device import make_generator
from lcssm.diffusion import diffusion_loss
from lcssm.errors import CheckpointError, ConfigError, DataError
from lcssm.experiments import pipeline
from lcssm.experiments.fid import feature_extractor, fid_run, image_quality
from lcssm.experiments.images import ImageBatches, load_split
from lcssm.experiments.pipeline import LikelihoodOptions, bpd_run, make_loss, open_run, sample_run, train_run
from lcssm.experiments.presets import ImagePreset, image_spec
from lcssm.experiments.spec import FORMAT, RunSpec, load_spec
from lcssm.files import read_metrics
from lcssm.metrics.distances import fid_from_features, inception_score, kid
from lcssm.metrics.features import digits_features
from lcssm.models import NCSNv2, UNet, get_preset
from lcssm.plots import save_image_grid, tile_images
from lcssm.sampling.langevin import noise_conditional_score
from lcssm.sampling.registry import get_sampler
from lcssm.sde import VESDE, TanhSDE
from lcssm.training.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint

LOOSE = {"rtol": 1e-2, "atol": 1e-2}  # ODE tolerances: the files and plumbing are under test, not accuracy


def tiny_spec(preset: ImagePreset | None = None, source: str | None = None, sets: tuple[str, ...] = (),
              **train) -> RunSpec:
    """The ``tiny`` preset for a handful of steps, checkpoints and grids every 2 steps, in score_sde's
    parametrisation (the network's output is the score; tests/test_precond_edm.py covers the edm default)."""
    spec = image_spec(preset or ImagePreset(preset="tiny", precond="score_sde"), source)
    train = {"steps": 4, "batch_size": 8, "ckpt_every": 2, "log_every": 1, "ema_decay": 0.5, **train}
    return apply_overrides(spec, ["grids.every=2", "grids.n=4", "grids.steps=2",
                                  *[f"train.{k}={v}" for k, v in train.items()], *sets])


def digits_levels(spec: RunSpec) -> RunSpec:
    """``spec`` as its run saves it: the digits' 17 grey levels filled in."""
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, n_bins=17))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = train_run(tiny_spec(), out, progress=False)
    return out, result


def _png_folder(path, n=6, size=(12, 10)):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path / f"img{i}.png")
    return path


def _capture_training(monkeypatch) -> list:
    """Record every TrainResult the pipeline's trainer returns (train_run itself returns only the records)."""
    results = []

    def train(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    real = pipeline.train
    monkeypatch.setattr(pipeline, "train", train)
    return results


# ----------------------------------------------------------------------------------------------- round trip
def test_round_trip_writes_the_documented_files(tiny_run, capsys):
    run_dir, result = tiny_run
    assert set(result) == {"train"}  # image presets do not sample after training
    assert result["train"]["steps"] == 4 and math.isfinite(result["train"]["final_loss"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["format"] == FORMAT and config["data"]["kind"] == "images" and config["preset"] == "tiny"
    assert config["train"]["steps"] == 4 and config["data"]["source"] == "digits"
    for step in (2, 4):
        grid = Image.open(run_dir / "grids" / f"step_{step:07d}.png")
        assert grid.size == (2 * 33 + 1, 2 * 33 + 1)  # 4 images of 8x8 enlarged to 32, 2x2 with 1-pixel gaps
    before = read_metrics(run_dir)  # other tests of this module may sample the same run
    n_before = {k: len(before.get(k, [])) for k in ("sample", "bpd", "fid")}

    pc = sample_run(run_dir, {"name": "pc", "n_samples": 6, "n_steps": 3, "batch_size": 4})
    assert Path(pc["file"]).parent == run_dir / "samples" and Path(pc["file"]).name.startswith("pc_")
    with np.load(pc["file"]) as f:
        images, samples = f["images"], f["samples"]
    assert images.dtype == np.uint8 and images.shape == (6, 1, 8, 8)
    assert samples.dtype == np.float32 and samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()
    np.testing.assert_array_equal(images, to_uint8(torch.from_numpy(samples), "minus_one_one").numpy())
    assert Path(pc["grid"]).is_file() and pc["grid"] == str(Path(pc["file"]).with_suffix(".png"))
    again = sample_run(run_dir, {"name": "pc", "n_samples": 2, "n_steps": 2})  # a second call keeps the first's
    assert again["file"] != pc["file"] and Path(pc["file"]).is_file()
    # tiny: Euler-Maruyama predictor, no corrector, + one denoising evaluation
    assert pc["nfe"] == 3 + 1 and pc["nfe_per_batch"] == [4, 4] and pc["step"] == 4
    assert pc["sampler"] == "pc" and pc["n"] == 6 and pc["n_steps"] == 3 and pc["predictor"] == "euler_maruyama"

    corrected = sample_run(run_dir, {"name": "pc", "n_samples": 2, "n_steps": 3, "corrector": "langevin",
                                     "n_corrector_steps": 2}, out=run_dir / "corrected.npz")
    assert corrected["nfe"] == 3 * (1 + 2) + 1 and corrected["corrector"] == "langevin"
    assert (run_dir / "corrected.png").is_file()
    with pytest.raises(ConfigError, match="sampler.corrector_snr is not a sampler option"):
        sample_run(run_dir, {"n_samples": 2, "n_steps": 2, "corrector_snr": 0.1})

    ode = sample_run(run_dir, {"name": "ode", "n_samples": 3, **LOOSE})
    assert ode["nfe"] > 1 and ode["non_finite"] == 0 and ode["rtol"] == 1e-2

    bpd = bpd_run(run_dir, LikelihoodOptions(n=3, batch_size=2, **LOOSE))
    assert bpd["n"] == 3 and bpd["n_bins"] == 17 and bpd["scale"] == "minus_one_one"
    assert math.isfinite(bpd["bpd"]) and math.isfinite(bpd["bpd_se"]) and bpd["data"] == "digits (test)"

    capsys.readouterr()
    assert main(["fid", str(run_dir), "--n-samples", "12", "--n-steps", "2", "--no-progress"]) == 0
    fid = json.loads(capsys.readouterr().out)
    for key in ("fid", "kid", "kid_std", "is", "is_std"):
        assert math.isfinite(fid[key]), key
    assert fid["fid"] > 0 and 1.0 <= fid["is"] <= 10.0
    assert fid["features"] == "digits-classifier" and fid["n_reference"] == 1437 and fid["n"] == 12
    assert Path(fid["file"]).is_file() and Path(fid["file"]).with_suffix(".png").is_file()
    assert Path(fid["file"]).parent == run_dir / "fid"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [len(metrics[k]) - n_before[k] for k in ("sample", "bpd", "fid")] == [4, 1, 1]
    assert [r["sampler"] for r in metrics["sample"][n_before["sample"]:]] == ["pc", "pc", "pc", "ode"]
    assert len(metrics["train"]) == 1 and metrics["train"][0]["steps"] == 4


def test_fid_over_sampler_seeds_is_the_mean_and_sd_of_single_seed_runs(tiny_run, capsys):
    run_dir, _ = tiny_run
    sampler = {"name": "pc", "n_samples": 10, "n_steps": 2, "seed": 3}
    over = fid_run(run_dir, sampler, n_seeds=3)
    single = [fid_run(run_dir, {**sampler, "seed": s}) for s in (3, 4, 5)]
    fids, kids = [r["fid"] for r in single], [r["kid"] for r in single]
    assert len(set(fids)) == 3  # the sets differ, so the spread is not zero by construction
    assert over["seeds"] == [3, 4, 5] and over["n_seeds"] == 3
    assert [r["fid"] for r in over["per_seed"]] == pytest.approx(fids, rel=1e-12)
    assert over["fid"] == pytest.approx(sum(fids) / 3, rel=1e-12)
    assert over["fid_sd"] == pytest.approx(float(np.std(fids, ddof=1)), rel=1e-9)
    assert over["kid"] == pytest.approx(sum(kids) / 3, rel=1e-9, abs=1e-12)
    assert over["is"] == pytest.approx(sum(r["is"] for r in single) / 3, rel=1e-12)
    assert len({r["file"] for r in over["per_seed"]}) == 3 and all(Path(r["file"]).is_file() for r in over["per_seed"])
    assert "fid_sd" not in single[0] and "per_seed" not in single[0]
    capsys.readouterr()
    assert main(["fid", str(run_dir), "--n-samples", "4", "--n-steps", "2", "--n-seeds", "0", "--no-progress"]) == 2
    assert "n_seeds must be >= 1, got 0" in capsys.readouterr().err


def test_loaded_score_is_the_ema_network_at_the_marginal_std(tiny_run):
    run_dir, _ = tiny_run
    run = open_run(run_dir, device="cpu")
    assert run.spec == digits_levels(tiny_spec())  # the spec the run was created with, as its data resolved it
    assert not run.model.training and run.step == 4
    state = load_checkpoint(checkpoint_path(run_dir, 4))
    ema = UNet(get_preset("tiny").model)
    ema.load_state_dict({k.removeprefix("backbone."): v for k, v in state["ema"].items()})
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["ema"])  # EMA 0.5: not the model
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5)
    std = torch.sqrt(-torch.expm1(-run.sde.integrated_beta(t)))  # VP marginal std, written out
    with torch.no_grad():
        torch.testing.assert_close(run.score_fn(x, t), ema.eval()(x, t, sigma=std))


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    results = _capture_training(monkeypatch)
    spec = tiny_spec(sets=("data.random_flip=true",), steps=4)
    assert spec.data.random_flip
    train_run(spec, tmp_path / "a", progress=False)
    train_run(apply_overrides(spec, ["train.steps=2"]), tmp_path / "b", progress=False)
    train_run(spec, tmp_path / "b", resume=True, progress=False)
    straight, _, resumed = results
    assert resumed.start_step == 2
    assert straight.losses == resumed.losses
    for a, b in zip(straight.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "b" / "grids").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2, 4]


def test_flipped_batches_are_pure_rank_independent_and_half_mirrored():
    levels = torch.randint(0, 17, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageData(levels, 17, "test")
    flipped = ImageBatches(data, 8, seed=3, scale="zero_one", flip=True)
    plain = ImageBatches(data, 8, seed=3, scale="zero_one", flip=False)
    torch.testing.assert_close(flipped(5), flipped(5))
    torch.testing.assert_close(torch.cat([flipped(5, 0, 2), flipped(5, 1, 2)]), flipped(5))
    n_mirrored, n_total = 0, 0
    for step in range(100):
        a, b = flipped(step), plain(step)
        same = (a == b).flatten(1).all(1)
        mirrored = (a == b.flip(-1)).flatten(1).all(1)
        assert (same | mirrored).all()
        n_mirrored += int((mirrored & ~same).sum())
        n_total += int((~(same & mirrored)).sum())  # images equal to their mirror tell nothing
    assert abs(n_mirrored / n_total - 0.5) < 4 * math.sqrt(0.25 / n_total)
    torch.testing.assert_close(plain(0), levels_to_float(levels, 17, "zero_one")[plain._rows.permutation(0)[:8]])


# ---------------------------------------------------------------------------------------------- bad input
def test_run_dirs_without_a_checkpoint_are_refused(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        sample_run(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        bpd_run(tmp_path / "empty")
    assert main(["fid", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint" in err


def test_paper_presets_need_a_data_dir(tmp_path):
    with pytest.raises(ConfigError, match="ncsnpp_deep_cifar10.*cifar10.*--data"):
        image_spec(ImagePreset(preset="ncsnpp_deep_cifar10"))
    spec = image_spec(ImagePreset(preset="ncsnpp_deep_cifar10"), str(tmp_path / "nowhere"))
    assert spec.train.steps == 950_001 and spec.train.batch_size == 128 and spec.train.ema_decay == 0.999
    with pytest.raises(DataError, match="does not exist"):
        train_run(spec, tmp_path / "run", progress=False)


@pytest.mark.parametrize("preset,source,sets,match", [
    ({"preset": "cifar"}, None, [], "unknown model preset 'cifar'"),
    ({}, None, ["objective.name=lcsss"], "objective.name must be one of .*lcss"),
    ({}, None, ["objective.center=middle"], "objective.center must be one of marginal, data, simulated"),
    ({}, None, ["objective.weighting=sigma"], "objective.weighting must be one of"),
    ({}, None, ["objective.gamma=0"], "objective.gamma must be > 0"),
    ({"resolution": 16}, None, [], "digits are 1x8x8"),
    ({"channels": 2}, "x", [], "channels must be 1 or 3"),
    ({"resolution": 7}, "x", [], "image_size=7 is not divisible"),
    ({}, None, ["data.holdout=1.0"], r"data.holdout must lie in \[0, 1\)"),
])
def test_bad_configs_name_the_field(preset, source, sets, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(image_spec(ImagePreset(**{"preset": "tiny", **preset}), source), sets)


def test_spec_round_trips_through_json():
    spec = tiny_spec(ImagePreset(preset="tiny", nf=16), sets=("objective.name=ssm_vr", "objective.gamma=2.0"))
    assert spec.model.config["nf"] == 16 and spec.objective.name == "ssm_vr"
    text = json.dumps(spec.to_dict())
    assert load_spec(json.loads(text)).to_dict() == spec.to_dict()
    assert load_spec(json.loads(text)) == spec


# ------------------------------------------------------------------------------------------- image folders
def test_image_folder_trains_at_resolution_8_and_holds_images_out(tmp_path, monkeypatch, capsys):
    folder = _png_folder(tmp_path / "imgs", n=6)
    spec = tiny_spec(ImagePreset(preset="tiny", resolution=8, channels=3), str(folder), steps=2)
    assert spec.data.shape == (3, 8, 8)
    assert [len(load_split(spec.data, s)) for s in ("train", "test")] == [5, 1]
    train_run(spec, tmp_path / "run", progress=False)
    run = open_run(tmp_path / "run", device="cpu")
    assert run.model.backbone.config.in_channels == 3 and run.model.backbone.config.image_size == 8
    assert run.spec.data.n_bins == 256
    bpd = bpd_run(tmp_path / "run", LikelihoodOptions(**LOOSE))
    assert bpd["n"] == 1 and bpd["n_bins"] == 256 and math.isfinite(bpd["bpd"])
    other = _png_folder(tmp_path / "other", n=3, size=(20, 20))
    assert bpd_run(tmp_path / "run", LikelihoodOptions(data=str(other), **LOOSE))["n"] == 3  # another folder: all
    # FID of a non-digits run needs the Inception weights: one line naming the file, exit code 2
    monkeypatch.delenv("LCSSM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr("lcssm.metrics.features.fid_helper_weights_path", lambda: None)  # as without the fid extra
    capsys.readouterr()
    assert main(["fid", str(tmp_path / "run"), "--n-samples", "4", "--n-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pt_inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "run" / "fid").exists()  # failed before sampling


def test_ncsnv2_trains_on_the_marginal_std_and_samples_with_annealed_langevin(tmp_path):
    folder = _png_folder(tmp_path / "imgs", n=6)
    spec = image_spec(ImagePreset(preset="ncsnv2_cifar10", resolution=8, nf=8), str(folder))
    spec = apply_overrides(spec, ["train.steps=2", "train.batch_size=4", "train.ema_decay=0", "grids.every=0"])
    train_run(spec, tmp_path / "run", progress=False)
    run = open_run(tmp_path / "run", device="cpu")
    assert isinstance(run.model.backbone, NCSNv2) and isinstance(run.sde, VESDE)
    x, t = torch.rand(3, 3, 8, 8), torch.rand(3)
    with torch.no_grad():
        torch.testing.assert_close(run.score_fn(x, t), run.model.backbone(x, sigma=run.sde.sigma(t)))
    out = sample_run(tmp_path / "run", {"name": "ald", "n_samples": 3, "n_steps": 4})
    assert out["nfe"] == 4 * 5 + 1 and out["non_finite"] == 0  # 4 levels x ncsnv2's 5 steps each + denoising
    assert out["ald_steps_each"] == 5 and out["ald_step_size"] == get_preset("ncsnv2_cifar10").sampling["step_lr"]


def test_annealed_langevin_walks_the_noise_levels_of_a_vp_run(tiny_run):
    """ald is no longer VE-only: it walks ς = σ_t/α_t of any SDE with a closed-form marginal, and is refused for
    an SDE without one; an image run refuses the single-noise-scale Langevin sampler."""
    out = sample_run(tiny_run[0], {"name": "ald", "n_samples": 2, "n_steps": 2}, out=tiny_run[0] / "ald.npz")
    assert out["nfe"] == 2 * 5 + 1 and out["non_finite"] == 0
    with pytest.raises(ConfigError, match="ald sampler does not apply to a run with"):
        get_sampler("ald", TanhSDE())
    with pytest.raises(ConfigError, match="langevin sampler does not apply to a run with"):
        sample_run(tiny_run[0], {"name": "langevin", "n_samples": 2})


# ------------------------------------------------------------------------------------------------ formulas
def test_noise_conditional_score_asks_for_the_time_of_each_sigma():
    sde = VESDE(sigma_min=0.01, sigma_max=10.0)
    seen = {}

    def score_fn(x, t):
        seen["t"] = t
        return x

    t = torch.tensor([0.0, 0.25, 0.5, 0.999, 1.0], dtype=torch.float64)
    noise_conditional_score(score_fn, sde)(torch.zeros(5, 1, dtype=torch.float64), sde.sigma(t))
    torch.testing.assert_close(seen["t"], t)


def test_reduce_mean_divides_the_loss_by_the_dimension(tmp_path):
    spec = image_spec(ImagePreset(preset="ddpmpp_deep_cifar10"), str(tmp_path))  # the only reduce_mean preset here
    assert spec.objective.reduce_mean
    sde = spec.sde.build()
    net = lambda x, t: torch.tanh(x) * (1 + t.view(-1, 1, 1, 1))  # noqa: E731
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    loss, diag = make_loss(spec, sde)(net, x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    t = 1e-5 + (1 - 1e-5) * torch.rand(4, generator=g)
    expected = diffusion_loss(net, sde, x0, objective="lcss", t=t, generator=g) / x0[0].numel()
    torch.testing.assert_close(diag["t"], t)
    torch.testing.assert_close(loss, expected)


def test_levels_match_the_digits_and_8_bit_conversion():
    digits = image_spec(ImagePreset(preset="tiny")).data
    for scale in ("zero_one", "minus_one_one"):
        for split in ("train", "test"):
            data = load_split(digits, split)
            assert data.n_bins == 17 and data.levels.dtype == torch.uint8 and int(data.levels.max()) == 16
            torch.testing.assert_close(data.as_float(scale), load_digits(split, scale=scale), rtol=0, atol=1e-6)
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 3.0, float("nan")])
    assert to_uint8(x, "minus_one_one").tolist() == [0, 0, 128, 255, 255, 0]
    assert to_uint8(x, "zero_one").tolist() == [0, 0, 0, 255, 255, 0]
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(levels_to_float(levels, 256, "minus_one_one"), "minus_one_one"), levels)


def test_image_quality_scores_8_bit_images_in_the_digits_classifier_features():
    digits = image_spec(ImagePreset(preset="digits")).data
    _, features = feature_extractor(digits, device="cpu")
    test = load_split(digits, "test").as_uint8()[:200]
    train = load_split(digits, "train").as_uint8()[:300]
    assert (test.float() / 127.5 - 1 - load_digits("test")[:200]).abs().max() <= 1 / 255 + 1e-6  # half an 8-bit step
    got = image_quality(test, train, features, kid_subset_size=100, seed=3)
    f_s, p_s = digits_features(test.float() / 127.5 - 1)
    f_r, _ = digits_features(train.float() / 127.5 - 1)
    assert got["fid"] == pytest.approx(fid_from_features(f_s, f_r), rel=1e-9)
    assert (got["kid"], got["kid_std"]) == pytest.approx(kid(f_s, f_r, subset_size=100, generator=make_generator(3)))
    assert (got["is"], got["is_std"]) == pytest.approx(inception_score(p_s, n_splits=10))
    assert abs(image_quality(train, train, features, kid_subset_size=100)["fid"]) < 1e-6 * got["fid"]
    noise = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert image_quality(noise, train, features, kid_subset_size=100)["fid"] > 10 * got["fid"]


def test_image_grid_layout(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(tmp_path / "g.png", images, ncol=3)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 33 + 1, 3 * 33 + 1, 3)
    tile = grid[1 + 33:1 + 33 + 32, 1 + 33:1 + 33 + 32]  # row 1, column 1: image 4, each pixel a 4x4 block
    np.testing.assert_array_equal(tile[::4, ::4], images[4].permute(1, 2, 0).numpy())
    assert (grid[1 + 33:, 1 + 2 * 33:] == 128).all()  # the sixth cell is empty (grey)
    with pytest.raises(DataError, match="uint8"):
        save_image_grid(tmp_path / "bad.png", images.float())
    floats = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    canvas = tile_images(floats, ncol=2, gap_value=-1.0)  # any dtype: a float canvas for matplotlib
    assert canvas.shape == (1, 2 * 3 + 1, 2 * 3 + 1) and canvas.dtype == floats.dtype
    assert torch.equal(canvas[0, 4:6, 1:3], floats[2, 0]) and (canvas[0, 4:6, 4:6] == -1).all()


# ------------------------------------------------------------------------- lcssm train / sample / bpd / fid
def test_cli_round_trip_on_digits(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "tiny", "--steps", "3", "--batch-size", "8", "--sample-every", "3",
                 "--n-grid", "4", "--grid-steps", "2", "--out", run, "--no-progress"]) == 0
    assert (tmp_path / "run" / "grids" / "step_0000003.png").is_file()
    assert main(["sample", run, "--sampler", "pc", "--n-samples", "4", "--n-steps", "2", "--no-progress"]) == 0
    assert np.load(tmp_path / "run" / "samples" / "pc_001.npz")["images"].shape == (4, 1, 8, 8)
    assert main(["bpd", run, "--n", "2", "--rtol", "1e-2", "--atol", "1e-2", "--no-progress"]) == 0
    assert main(["fid", run, "--n-samples", "8", "--n-steps", "2", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k][-1][m]) for k, m in (("bpd", "bpd"), ("fid", "fid"), ("fid", "kid")))
    assert metrics["sample"][-1]["n"] == 4 and metrics["sample"][-1]["n_steps"] == 2
    assert metrics["bpd"][-1]["n"] == 2 and metrics["bpd"][-1]["rtol"] == 1e-2 and metrics["fid"][-1]["n"] == 8
