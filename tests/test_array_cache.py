"""The on-disk decode cache of image folders (lcssm.data.array_cache) and the splits that index into it."""

from __future__ import annotations

import dataclasses
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcssm.cli import main
from lcssm.data import images as images_module
from lcssm.data.array_cache import cache_file, load_or_build
from lcssm.data.images import ImageFolder
from lcssm.data.levels import ImageData
from lcssm.errors import DataError
from lcssm.experiments.fid import feature_extractor, image_quality
from lcssm.experiments.images import ImageBatches, load_split
from lcssm.experiments.presets import ImagePreset, image_spec


def _folder(root: Path, n: int = 5, corrupt: bool = True) -> Path:
    """``n`` random RGB images of different sizes, plus a truncated PNG when ``corrupt``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 10 + i, 14 - i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    if corrupt:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _load(root: Path, cache: Path | None, **kw) -> tuple[torch.Tensor, list[str]]:
    """Images and the warnings loading them gave."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = ImageFolder(root, resolution=8, cache_dir=cache, **kw).load_all()
    return x, [str(w.message) for w in record]


def _no_decoding(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache holds the folder")

    monkeypatch.setattr(images_module.Image, "open", refuse)


def test_cached_images_equal_decoded_ones_and_are_memory_mapped(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    expected, msgs = _load(root, None)
    assert expected.shape == (5, 3, 8, 8) and sum("broken.png" in m for m in msgs) == 1
    first, msgs = _load(root, cache)  # decodes and writes the cache: the skipped file is named once
    assert torch.equal(first, expected) and sum("broken.png" in m for m in msgs) == 1
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    assert files[1].startswith("imgs-3x8x8-")
    meta = json.loads((cache / files[0]).read_text())
    assert meta["rows"] == 5 and meta["paths"] == [f"img{i}.png" for i in range(5)]

    _no_decoding(monkeypatch)
    folder = ImageFolder(root, resolution=8, cache_dir=cache)
    with pytest.warns(UserWarning, match="broken.png"):  # the skipped file is named again, from the metadata
        again = folder.load_all()
    assert torch.equal(again, expected) and [p.name for p in folder.paths] == meta["paths"]
    maps = Path("/proc/self/maps")
    if maps.exists():  # the pixels live in the mapped file, not in a copy
        assert str((cache / files[1]).resolve()) in maps.read_text()


def test_strict_refuses_a_file_the_cache_skipped(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    _load(root, tmp_path / "cache")
    _no_decoding(monkeypatch)
    with pytest.raises(DataError, match="broken.png"):
        ImageFolder(root, resolution=8, cache_dir=tmp_path / "cache", strict=True).load_all()


def test_a_changed_folder_or_size_gets_a_new_cache_file(tmp_path):
    root = _folder(tmp_path / "imgs", corrupt=False)
    cache = tmp_path / "cache"
    x, _ = _load(root, cache)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "img9.png")
    y, _ = _load(root, cache)
    assert len(y) == len(x) + 1 and torch.equal(y[:-1], x) and not y[-1].any()
    z = ImageFolder(root, resolution=4, cache_dir=cache).load_all()
    assert z.shape == (6, 3, 4, 4)
    assert len(list(cache.glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["truncate", "metadata"])
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    root = _folder(tmp_path / "imgs", corrupt=False)
    cache = tmp_path / "cache"
    expected = _load(root, cache)[0].clone()  # a copy: the mapping itself would see the damage
    (npy,) = cache.glob("*.npy")
    if damage == "truncate":  # a new, short file (truncating the mapped one in place would fault the mapping)
        data = npy.read_bytes()
        npy.unlink()
        npy.write_bytes(data[:200])
    else:
        meta = json.loads(npy.with_suffix(".json").read_text())
        npy.with_suffix(".json").write_text(json.dumps({**meta, "rows": 99}))
    x, msgs = _load(root, cache)
    assert torch.equal(x, expected)
    assert any("unreadable cache file" in m and npy.name in m for m in msgs)
    assert not _load(root, cache)[1]  # rebuilt: the next load is clean


def test_a_failed_build_leaves_no_file_behind(tmp_path):
    root = _folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolder(root, resolution=8, cache_dir=tmp_path / "cache", strict=True).load_all()
    assert list((tmp_path / "cache").iterdir()) == []


def _fill(value: int, rows: int):
    def build(out: np.ndarray) -> dict:
        out[:rows] = value
        return {"rows": rows}

    return build


def test_other_local_ranks_wait_for_rank_0(tmp_path):
    key, shape = {"what": "test"}, (4, 2)
    got = {}

    def waiter():
        got["array"], got["meta"] = load_or_build(tmp_path, "x", key, shape, _fill(9, 1), local_rank=1,
                                                  poll_seconds=0.01, timeout=30)

    thread = threading.Thread(target=waiter)
    thread.start()
    array, meta = load_or_build(tmp_path, "x", key, shape, _fill(7, 3), local_rank=0)
    thread.join()
    assert array.shape == (3, 2) and (array == 7).all() and meta["rows"] == 3
    np.testing.assert_array_equal(got["array"], array)  # the waiter read rank 0's file, never built its own
    with pytest.raises(DataError, match="gave up after"):
        load_or_build(tmp_path, "x", {"what": "other"}, shape, _fill(1, 1), local_rank=1, poll_seconds=0.01,
                      timeout=0.05)


def test_cache_file_names_depend_on_the_key_only():
    a = cache_file("/c", "my data/1", {"k": 1})
    assert a == cache_file("/c", "my data/1", {"k": 1}) and a.name.startswith("my_data_1-")
    assert a != cache_file("/c", "my data/1", {"k": 2})


# ------------------------------------------------------------------------- splits that index into the source
def test_an_indexed_split_batches_like_its_copy(tmp_path):
    root = _folder(tmp_path / "imgs", n=9, corrupt=False)
    spec = image_spec(ImagePreset(preset="tiny", resolution=8, channels=3), str(root))
    data = dataclasses.replace(spec.data, holdout=0.3, cache_dir=str(tmp_path / "cache"))
    train = load_split(data, "train")
    assert train.index is not None and len(train) == 6 and len(train.levels) == 9
    copy = ImageData(train.as_uint8(), 256, "copy")
    assert torch.equal(copy.levels, train.levels[train.index])
    a, b = ImageBatches(train, 4, 0, "minus_one_one", True), ImageBatches(copy, 4, 0, "minus_one_one", True)
    for step in range(4):
        assert torch.equal(a(step), b(step))
        assert torch.equal(a(step, 1, 2), b(step, 1, 2))
    assert torch.cat(list(train.chunks(4))).shape == (6, 3, 8, 8)
    assert torch.equal(torch.cat(list(train.chunks(4, n=5))), copy.levels[:5])


def test_image_quality_of_a_split_in_chunks_equals_the_whole():
    digits = image_spec(ImagePreset(preset="digits")).data
    _, features = feature_extractor(digits, device="cpu")
    test, train = load_split(digits, "test"), load_split(digits, "train")
    images = test.as_uint8()[:300]
    whole = image_quality(images, train.as_uint8(), features, kid_subset_size=100, seed=1)
    chunked = image_quality(images, train, features, kid_subset_size=100, seed=1, chunk_size=37)
    assert chunked == pytest.approx(whole, rel=1e-5)  # float32 features: batch size moves the last bits
    assert whole["fid"] > 1.0  # a non-trivial distance, so equality above says something


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_strict_and_cache_dir(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", n=6)
    common = ["train", "--preset", "tiny", "--data", str(root), "--resolution", "8", "--steps", "1",
              "--batch-size", "4", "--sample-every", "0", "--no-progress"]
    assert main([*common, "--strict", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.png" in err
    with pytest.warns(UserWarning, match="broken.png"):
        assert main([*common, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "b")]) == 0
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["data"]["cache_dir"] == str(tmp_path / "cache") and config["data"]["strict"] is False
    assert config["data"]["source"] == str(root) and config["data"]["shape"] == [1, 8, 8]  # the tiny preset: 1 channel
    # an image option without --preset is refused (a point run would ignore it); --steps 1 --n-samples 0 keep
    # the point run short should it start anyway
    capsys.readouterr()
    assert main(["train", "--cache-dir", str(tmp_path), "--steps", "1", "--n-samples", "0", "--no-progress",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--cache-dir" in err and "image option" in err
    assert not (tmp_path / "c").exists()

