"""Checkpoint files: atomic write with checksum, weights-only loading, fallback past bad files, RNG state,
safetensors export."""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lcssm.cli import USER_ERRORS
from lcssm.errors import CheckpointError
from lcssm.files import file_digest, temporary_path
from lcssm.models import EnergyMLP
from lcssm.training.checkpoint import (
    FORMAT,
    checkpoint_path,
    get_rng_state,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_run,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
)


def main(argv: list[str]) -> int:
    """``lcssm export`` through its own registration and the CLI's error mapping (one line, exit code 2),
    without importing the other subcommands."""
    import argparse
    import sys

    from lcssm.cli import export

    parser = argparse.ArgumentParser(prog="lcssm")
    export.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"lcssm {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))


def _state(step: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed + step)
    return {"format": FORMAT, "step": step, "model": {"w": torch.randn(50, 40, generator=g)},
            "train_config": {"steps": 10}, "nested": [1, 2.5, "x", None, (3, 4)]}


def test_save_load_round_trip_and_checksum_file(tmp_path):
    path = checkpoint_path(tmp_path, 12)
    state = _state(12)
    digest = save_checkpoint(path, state)
    assert path.name == "ckpt_00000012.pt" and path.parent.name == "checkpoints"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    # the sha256sum format: "<hex>  <name>"
    assert (path.parent / "ckpt_00000012.pt.sha256").read_text() == f"{digest}  ckpt_00000012.pt\n"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["nested"] == state["nested"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]  # no temporaries


@pytest.mark.parametrize("damage,match", [
    ("truncate", "SHA-256"),
    ("flip_byte", "SHA-256"),
    ("drop_checksum", "no checksum file"),
    ("delete", "does not exist"),
])
def test_damaged_checkpoint_is_detected(tmp_path, damage, match):
    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, _state(3))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    elif damage == "drop_checksum":
        path.with_name(path.name + ".sha256").unlink()
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


class _Payload:
    """Unpickling this touches a marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_object_is_refused_even_with_a_valid_checksum(tmp_path, writer):
    marker = tmp_path / "executed"
    path = checkpoint_path(tmp_path, 1)
    path.parent.mkdir()
    evil = {"format": FORMAT, "step": 1, "model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}
    with open(path, "wb") as f:
        (torch.save if writer == "torch.save" else pickle.dump)(evil, f)
    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  x\n")
    with pytest.raises(CheckpointError, match="refusing to load") as e:
        load_checkpoint(path)
    assert "Unsupported" in str(e.value)  # the reason torch gives, not its generic preamble
    assert not marker.exists()
    if writer == "pickle.dump":  # the payload is live: a plain unpickler would have run it
        with open(path, "rb") as f:
            pickle.load(f)  # noqa: S301 - demonstrating what weights-only loading prevents
        assert marker.exists()


def test_fallback_to_previous_good_checkpoint_names_the_bad_file(tmp_path, caplog):
    for step in (5, 10, 15):
        save_checkpoint(checkpoint_path(tmp_path, step), _state(step))
    newest = checkpoint_path(tmp_path, 15)
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="lcssm.training.checkpoint"):
        path, state = latest_good_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 10) and state["step"] == 10
    assert torch.equal(state["model"]["w"], _state(10)["model"]["w"])
    assert any("ckpt_00000015.pt" in r.getMessage() and "SHA-256" in r.getMessage() for r in caplog.records)


def test_foreign_checkpoint_is_skipped_and_all_bad_is_an_error(tmp_path):
    assert latest_good_checkpoint(tmp_path) is None  # no checkpoint at all
    save_checkpoint(checkpoint_path(tmp_path, 1), {"weights": torch.zeros(3)})  # intact, but not ours
    save_checkpoint(checkpoint_path(tmp_path, 2), _state(2))
    checkpoint_path(tmp_path, 2).write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        latest_good_checkpoint(tmp_path)
    msg = str(e.value)
    assert "ckpt_00000001.pt is not an lcssm training checkpoint" in msg and "ckpt_00000002.pt fails" in msg


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 10, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), _state(step))
    removed = prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20]
    assert sorted(p.name for p in removed) == ["ckpt_00000001.pt", "ckpt_00000002.pt", "ckpt_00000003.pt"]
    assert not list((tmp_path / "checkpoints").glob("ckpt_00000001*"))


def _draw() -> tuple:
    return random.random(), np.random.random(), np.random.normal(), torch.rand(3)  # noqa: NPY002


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.normal()  # noqa: NPY002 - leaves a cached gaussian in numpy's state
    state = get_rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": state})
    first = _draw()
    _draw()
    set_rng_state(load_checkpoint(path)["rng"])
    again = _draw()
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])


def _train_tiny(run_dir: Path, ema: float = 0.5) -> None:
    from lcssm.objectives import exact_sm
    from lcssm.training.batches import tensor_batches
    from lcssm.training.config import TrainConfig
    from lcssm.training.loop import train

    torch.manual_seed(0)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=4, batch_size=16, ema_decay=ema, device="cpu", log_every=2)
    train(EnergyMLP(hidden=8), lambda m, x, g: exact_sm(m, x), tensor_batches(data, 16, 0), cfg, run_dir,
          run_config={"hidden": 8}, progress=False)


@pytest.mark.parametrize("ema", [0.5, 0.0])
def test_export_writes_ema_safetensors_loadable_without_the_trainer(tmp_path, capsys, ema):
    from safetensors import safe_open
    from safetensors.torch import load_file

    run = tmp_path / "run"
    _train_tiny(run, ema)
    assert main(["export", str(run)]) == 0
    exported = run / "ema.safetensors"
    assert str(exported) in capsys.readouterr().err
    state = load_checkpoint(checkpoint_path(run, 4))
    expected = state["ema"] if ema else state["model"]
    assert state["ema"] is None if not ema else state["ema"] is not None
    model = EnergyMLP(hidden=8)
    model.load_state_dict(load_file(exported))  # strict: every key, nothing else
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "4" and '"hidden": 8' in meta["config"]
    assert meta["format"] == ("lcssm-ema" if ema else "lcssm-model")
    other = tmp_path / "elsewhere" / "w.safetensors"
    assert main(["export", str(run), "--file", str(other)]) == 0 and other.is_file()


def test_export_of_a_pipeline_run_has_the_backbone_keys(tmp_path, capsys):
    """A run's model is a ScoreModel holding the network as ``backbone``; the export is the network's own state
    dict, loadable strictly into the backbone built from the spec in its metadata."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from lcssm.config import apply_overrides
    from lcssm.experiments.pipeline import train_run
    from lcssm.experiments.presets import toy_spec
    from lcssm.experiments.spec import load_spec
    from lcssm.models.build import build_model

    run = tmp_path / "run"
    spec = apply_overrides(toy_spec(), ["train.steps=2", "train.batch_size=16", "train.ema_decay=0.5",
                                        "train.device=cpu", "model.hidden=8", "sampler.n_samples=0"])
    train_run(spec, run, progress=False)
    assert main(["export", str(run)]) == 0
    state = load_checkpoint(checkpoint_path(run, 2))
    assert state["ema"] and all(k.startswith("backbone.") for k in state["ema"])
    exported = load_file(run / "ema.safetensors")
    assert set(exported) == {k.removeprefix("backbone.") for k in state["ema"]}
    with safe_open(str(run / "ema.safetensors"), "pt") as f:
        saved = load_spec(json.loads(f.metadata()["config"]))
    net = build_model(saved.model, saved.data.shape[0], time_conditional=False)
    net.load_state_dict(exported)  # strict
    for k, v in net.state_dict().items():
        assert torch.equal(v, state["ema"]["backbone." + k]), k


def test_load_run_gives_config_and_ema_weights(tmp_path):
    run = tmp_path / "run"
    _train_tiny(run)
    config, weights = load_run(run)
    assert config["hidden"] == 8 and config["train"]["steps"] == 4
    assert torch.equal(weights["net.0.weight"], load_checkpoint(checkpoint_path(run, 4))["ema"]["net.0.weight"])
    config, model = load_run(run, lambda c: EnergyMLP(hidden=c["hidden"]))
    assert not model.training and torch.equal(model.state_dict()["net.0.weight"], weights["net.0.weight"])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_run(run, lambda c: EnergyMLP(hidden=9))


@pytest.mark.parametrize("setup,match", [
    ("missing", "does not exist"),
    ("empty", "no checkpoint in"),
    ("corrupt", "no usable checkpoint in"),
    ("out_is_dir", "is a directory; give a file name"),
])
def test_export_bad_inputs_exit_2_with_one_line(tmp_path, capsys, setup, match):
    run = tmp_path / "run"
    argv = ["export", str(run)]
    if setup == "empty":
        run.mkdir()
    elif setup in ("corrupt", "out_is_dir"):
        _train_tiny(run)
        if setup == "corrupt":
            checkpoint_path(run, 4).write_bytes(b"not a checkpoint")
        else:
            argv += ["--file", str(tmp_path)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and str(run if setup != "out_is_dir" else tmp_path) in err[0], err


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    kept = checkpoint_path(tmp_path, 5)
    save_checkpoint(kept, {"w": torch.zeros(2)})
    stale = temporary_path(checkpoint_path(tmp_path, 10))  # the name save_checkpoint writes before its rename
    stale.write_bytes(b"half a checkpoint")
    remove_stale_temporaries(tmp_path)
    assert not stale.exists() and kept.exists() and [s for s, _ in list_checkpoints(tmp_path)] == [5]


def test_file_digest_equals_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # 10,500 bytes: chunks of 1,000 leave a partial last one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(path, chunk=1000) == hashlib.sha256(data).hexdigest() == file_digest(path)
    assert file_digest(path, "sha1", chunk=7) == hashlib.sha1(data).hexdigest()
