"""Published checkpoints (score_sde, ncsnv2) imported into lcssm's presets, and saved runs keeping their meaning.

Synthetic checkpoints are lcssm networks with random weights written in the published layouts; the key names and
shapes checked here were read from score_sde's models/ncsnpp.py + layerspp.py and ncsnv2's models/ncsnv2.py.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from lcssm.cli import main
from lcssm.errors import CheckpointError
from lcssm.experiments.spec import ModelSpec
from lcssm.models import MODEL_PRESETS, get_preset
from lcssm.models.build import build_model
from lcssm.models.convert import from_ncsnv2, from_score_sde, preset_score_model, to_ncsnv2, to_score_sde
from lcssm.models.unet import UNetConfig

# the NCSN++ / DDPM++ presets at a small width (same module list); NCSNv2 at nf=8
SMALL = {"ncsnpp_deep_cifar10": dict(nf=8), "ddpmpp_deep_cifar10": dict(nf=8),
         "ncsnpp_celebahq1024": dict(nf=2, image_size=64, ch_mult=(1, 2, 4, 8, 8, 8)),
         "ncsnv2_cifar10": dict(nf=8), "ncsnv2_ffhq256": dict(nf=4, image_size=64)}


def _small(name: str):
    p = get_preset(name)
    return dataclasses.replace(p, model=dataclasses.replace(p.model, **SMALL[name]))


def _random(preset, seed=0):
    torch.manual_seed(seed)
    model = preset_score_model(preset).eval()
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0, 0.2)
    return model


def _inputs(preset, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = preset.model.image_size
    return torch.rand(2, preset.model.in_channels, size, size, generator=g), torch.tensor([0.1, 0.7])


# --- score_sde ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ncsnpp_deep_cifar10", "ddpmpp_deep_cifar10", "ncsnpp_celebahq1024"])
def test_score_sde_round_trip_gives_the_same_score(name):
    p = _small(name)
    model = _random(p)
    ckpt = to_score_sde(model.backbone, step=7)
    loaded = from_score_sde(ckpt, p)
    assert not loaded.training and loaded.c_out == p.c_out
    x, t = _inputs(p)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


def test_score_sde_key_layout_is_the_published_one():
    """NCSNpp for configs/ve/cifar10_ncsnpp_deep_continuous.py: modules 0-2 the Fourier projection and two Dense
    layers, 3 the input conv, then ResnetBlockBigGANpp / AttnBlockpp / the FIR pyramid conv ..., 95 modules."""
    p = _small("ncsnpp_deep_cifar10")
    nf = p.model.nf
    model = to_score_sde(_random(p).backbone)["model"]
    shapes = {k: tuple(v.shape) for k, v in model.items()}
    assert shapes["module.all_modules.0.W"] == (nf,)
    assert shapes["module.all_modules.1.weight"] == (4 * nf, 2 * nf)
    assert shapes["module.all_modules.3.weight"] == (nf, 3, 3, 3)
    assert shapes["module.all_modules.4.Dense_0.weight"] == (nf, 4 * nf)
    assert shapes["module.all_modules.4.GroupNorm_0.weight"] == (nf,)
    # level 0: modules 4-11; 12: BigGAN down block (1x1 Conv_2 shortcut); 13: the pyramid's FIR conv (Conv2d_0)
    assert shapes["module.all_modules.12.Conv_2.weight"] == (nf, nf, 1, 1)
    assert shapes["module.all_modules.13.Conv2d_0.weight"] == (nf, 3, 3, 3)
    # level 1 (16x16) alternates blocks and attention: q, k, v, out are NIN layers with W (in, out)
    assert shapes["module.all_modules.15.NIN_0.W"] == (2 * nf, 2 * nf)
    assert shapes["module.all_modules.15.NIN_3.b"] == (2 * nf,)
    assert max(int(k.split(".")[2]) for k in model) == 94
    ema = to_score_sde(_random(p).backbone)["ema"]["shadow_params"]
    assert len(ema) == len(model) - 1  # every trainable tensor but the fixed Fourier W


def _tamper(ckpt, change):
    """Apply ``change`` to the model dict and rebuild the EMA list from it (as a consistent checkpoint would)."""
    model = dict(ckpt["model"])
    change(model)
    shadow = [v for k, v in model.items() if not k.endswith("all_modules.0.W")]
    return {**ckpt, "model": model, "ema": {**ckpt["ema"], "shadow_params": shadow}}


def test_score_sde_uses_the_ema_weights_not_the_model_weights():
    p = _small("ncsnpp_deep_cifar10")
    ema_model = _random(p, seed=0)
    ckpt = to_score_sde(ema_model.backbone)
    other = to_score_sde(_random(p, seed=1).backbone)
    ckpt = {**ckpt, "model": {k: (ckpt["model"][k] if k.endswith(".0.W") else v) for k, v in other["model"].items()}}
    ckpt["model"]["module.sigmas"] = torch.ones(3)  # score_sde's buffer of the discrete sigmas: ignored
    loaded = from_score_sde(ckpt, p)
    x, t = _inputs(p)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), ema_model(x, t))


@pytest.mark.parametrize("change,match", [
    (lambda m: m.pop("module.all_modules.5.Conv_1.bias"), "missing tensor 'all_modules.5.Conv_1.bias'"),
    (lambda m: m.update({"module.all_modules.95.weight": torch.zeros(3)}), "unexpected tensor 'all_modules.95.weight'"),
    (lambda m: m.update({"module.all_modules.13.Conv2d_0.weight": torch.zeros(8, 3, 1, 1)}),
     r"'all_modules.13.Conv2d_0.weight' has shape \(8, 3, 1, 1\), expected \(8, 3, 3, 3\)"),
])  # fmt: skip
def test_score_sde_refuses_a_tampered_checkpoint_naming_the_key(change, match):
    p = _small("ncsnpp_deep_cifar10")
    ckpt = _tamper(to_score_sde(_random(p).backbone), change)
    with pytest.raises(CheckpointError, match=match):
        from_score_sde(ckpt, p)


def test_score_sde_refuses_an_ema_that_does_not_fit():
    p = _small("ddpmpp_deep_cifar10")
    ckpt = to_score_sde(_random(p).backbone)
    with pytest.raises(CheckpointError, match="shadow parameters"):
        from_score_sde({**ckpt, "ema": {"shadow_params": ckpt["ema"]["shadow_params"][:-1]}}, p)
    with pytest.raises(CheckpointError, match="'model' and 'ema'"):
        from_score_sde({"model": ckpt["model"]}, p)


# --- ncsnv2 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ncsnv2_cifar10", "ncsnv2_ffhq256"])
def test_ncsnv2_round_trip_and_key_layout(name):
    p = _small(name)
    model = _random(p)
    ckpt = to_ncsnv2(model.backbone, step=5)
    keys = set(ckpt[0])
    assert {k[len("module."):] for k in keys} == set(ckpt[4])  # the EMA helper's names lack DataParallel's prefix
    # NCSNv2 (4 stages: res1-res4, refine1 = deepest) and NCSNv2Deepest (res31 / refine31 between 3 and 4)
    deepest = name == "ncsnv2_ffhq256"
    assert ("module.res31.0.conv1.weight" in keys) == deepest
    assert ("module.refine31.crp.convs.0.weight" in keys) == deepest
    assert {"module.begin_conv.weight", "module.normalizer.alpha", "module.res1.0.normalize1.gamma",
            "module.res2.0.conv2.conv.weight", "module.res2.0.shortcut.conv.weight",
            "module.refine1.adapt_convs.0.2_2_conv.weight", "module.refine1.output_convs.1_2_conv.weight",
            "module.refine2.msf.convs.1.weight", "module.end_conv.bias"} <= keys
    assert "module.refine1.msf.convs.0.weight" not in keys  # the deepest RefineBlock has one input (start=True)
    loaded = from_ncsnv2(ckpt, p)
    x, t = _inputs(p)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


def test_ncsnv2_refuses_a_tampered_checkpoint_naming_the_key():
    p = _small("ncsnv2_cifar10")
    ckpt = to_ncsnv2(_random(p).backbone)
    ema = dict(ckpt[4])
    ema.pop("refine3.crp.convs.1.weight")
    with pytest.raises(CheckpointError, match="missing tensor 'refine3.crp.convs.1.weight'"):
        from_ncsnv2([*ckpt[:4], ema], p)
    with pytest.raises(CheckpointError, match="unexpected tensor 'res9.0.conv1.weight'"):
        from_ncsnv2([*ckpt[:4], {**ckpt[4], "res9.0.conv1.weight": torch.zeros(1)}], p)
    with pytest.raises(CheckpointError, match="EMA"):
        from_ncsnv2(ckpt[:4], p)  # trained without EMA


# --- lcssm import ------------------------------------------------------------------------------------------


def test_import_writes_a_run_that_samples(tmp_path):
    from lcssm.experiments.pipeline import open_run, sample_run

    model = _random("digits")
    torch.save(to_score_sde(model.backbone, step=42), tmp_path / "ckpt.pth")
    out = tmp_path / "run"
    assert main(["import", "score-sde", str(tmp_path / "ckpt.pth"), "--preset", "digits", "--out", str(out)]) == 0
    run = open_run(out, device="cpu")
    assert run.step == 42 and run.spec.preset == "digits" and run.spec.model.config["fir"] is False
    x, t = _inputs(get_preset("digits"))
    with torch.no_grad():
        assert torch.equal(run.model(x * 2 - 1, t), model(x * 2 - 1, t))
    record = sample_run(out, {"n_samples": 4, "n_steps": 3, "batch_size": 4})
    assert record["step"] == 42 and Path(record["file"]).is_file()


def test_import_ncsnv2_with_a_small_preset(tmp_path, monkeypatch):
    from lcssm.experiments.pipeline import open_run

    p = dataclasses.replace(_small("ncsnv2_cifar10"), name="ncsnv2_small")
    monkeypatch.setitem(MODEL_PRESETS, "ncsnv2_small", p)
    model = _random(p)
    torch.save(to_ncsnv2(model.backbone, step=9), tmp_path / "ckpt.pth")
    out = tmp_path / "run"
    args = ["import", "ncsnv2", str(tmp_path / "ckpt.pth"), "--preset", "ncsnv2_small", "--out", str(out),
            "--data", str(tmp_path / "cifar-10-batches-py")]
    assert main(args) == 0
    run = open_run(out, device="cpu")
    x, t = _inputs(p)
    with torch.no_grad():
        assert run.step == 9 and torch.equal(run.model(x, t), model(x, t))
    assert main(args) == 2  # the run directory already holds a checkpoint


def test_import_refuses_pickled_objects_and_wrong_formats(tmp_path, capsys):
    torch.save({"model": argparse.Namespace(a=1), "ema": {}}, tmp_path / "evil.pth")
    argv = ["import", "score-sde", str(tmp_path / "evil.pth"), "--preset", "digits", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "refusing to load" in capsys.readouterr().err and not (tmp_path / "r").exists()
    torch.save(to_ncsnv2(_random(_small("ncsnv2_cifar10")).backbone), tmp_path / "v2.pth")
    assert main(["import", "score-sde", str(tmp_path / "v2.pth"), "--preset", "digits", "--out",
                 str(tmp_path / "r")]) == 2
    assert "not a score_sde checkpoint" in capsys.readouterr().err


# --- saved runs keep their meaning -------------------------------------------------------------------------

# outputs of the tiny and digits networks (seed 0, init_scale 1) computed with lcssm before FIR, the DDPM
# embedding spacing and model-dtype features existed (every 9th entry of the (2, 1, 8, 8) output)
BEFORE = {
    "tiny": [0.5751085, 0.2968408, -0.2716863, 1.7871021, -1.027985, -0.3612957, -0.6363831, -0.6096, 0.321617,
             0.043287, -0.122372, -0.2021379, -0.5005751, -1.0284402, 0.3076696],
    "digits": [0.5874401, 1.5420046, -3.6557481, 1.6086669, 1.2973831, 5.0265703, -0.9758443, -0.2652752,
               -0.0445716, -0.3703862, 0.6932545, 0.2398468, 0.2601631, 0.0736847, 0.4445513],
}  # fmt: skip
NEW_KEYS = ("fir", "fir_kernel", "sinusoidal_spacing")


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_a_config_saved_before_the_new_fields_builds_the_same_network(name):
    old = ModelSpec(arch="unet", config=dataclasses.asdict(get_preset(name).model)).config
    old = {k: v for k, v in old.items() if k not in NEW_KEYS}  # as config.json held it
    old["init_scale"] = 1.0
    assert set(old) | set(NEW_KEYS) == set(UNetConfig.field_names())
    torch.manual_seed(0)
    net = build_model(ModelSpec(arch="unet", config=old)).eval()
    assert net.config.fir is False and net.config.sinusoidal_spacing == "half"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = net(x, torch.tensor([0.3, 0.8]), torch.tensor([0.5, 3.0]))
    # float32 kernels differ between CPUs by ~1e-5 relative here; FIR or the DDPM spacing would move it by > 10 %
    assert torch.allclose(y.flatten()[::9], torch.tensor(BEFORE[name]), rtol=1e-4, atol=1e-5)


def test_image_spec_carries_the_published_settings():
    from lcssm.experiments.presets import ImagePreset, image_spec

    spec = image_spec(ImagePreset(preset="ddpmpp_deep_cifar10"), "/data/cifar-10-batches-py")
    assert spec.model.c_out == "neg_inv_sigma" and spec.model.config["sinusoidal_spacing"] == "ddpm"
    assert spec.model.config["fir"] is False
    spec = image_spec(ImagePreset(preset="ncsnpp_deep_cifar10"), "/data/cifar-10-batches-py")
    assert spec.model.c_out == "none" and spec.model.config["fir"] is True
