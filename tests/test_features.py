"""Tests of lcssm.metrics.features: the shipped digits classifier and the FID Inception-v3 loader."""

from __future__ import annotations

import pytest
import torch

from lcssm.data.digits import load_digits
from lcssm.errors import DataError
from lcssm.metrics.distances import fid_from_features
from lcssm.metrics.features import (
    DIGITS_FEATURE_DIM,
    INCEPTION_ENV,
    INCEPTION_FILENAME,
    digits_features,
    file_digest,
    inception_features,
    load_digits_classifier,
    load_inception,
    preprocess_for_inception,
)
from lcssm.metrics.inception import N_CLASSES, POOL3_DIM, FIDInceptionV3, _avg_pool_3x3

# ------------------------------------------------------------------ digits classifier


@pytest.fixture(scope="module")
def digits_model():
    return load_digits_classifier("cpu")


def test_shipped_digits_classifier_accuracy(digits_model):
    x, y = load_digits("test", return_labels=True)
    feats, probs = digits_features(x, model=digits_model, batch_size=100)  # several batches
    assert feats.shape == (360, DIGITS_FEATURE_DIM) and probs.shape == (360, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(360), atol=1e-5, rtol=0)
    acc = (probs.argmax(1) == y).float().mean().item()
    assert acc >= 0.97, acc
    assert not any(p.requires_grad for p in digits_model.parameters())


def test_digits_features_separate_real_from_noise(digits_model):
    train = load_digits("train")
    test = load_digits("test")
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f_train, _ = digits_features(train, model=digits_model)
    f_test, _ = digits_features(test, model=digits_model)
    f_noise, _ = digits_features(noise, model=digits_model)
    # A held-out real split is far closer in feature space than uniform noise.
    assert fid_from_features(f_train, f_test) < 0.1 * fid_from_features(f_train, f_noise)


def test_digits_features_rejects_bad_shape(digits_model):
    with pytest.raises(DataError, match="shape"):
        digits_features(torch.zeros(4, 8, 8), model=digits_model)
    with pytest.raises(DataError, match="8x8"):
        digits_features(torch.zeros(4, 1, 16, 16), model=digits_model)
    with pytest.raises(DataError, match="NaN"):
        digits_features(torch.full((4, 1, 8, 8), float("nan")), model=digits_model)


# ------------------------------------------------------------------ FID Inception-v3


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised FID Inception state dict saved to disk (the real weights are not here)."""
    torch.manual_seed(0)
    model = FIDInceptionV3()
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME
    torch.save(model.state_dict(), path)
    return path, model


def test_inception_parameter_count(inception_file):
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, aux head).
    # Minus the aux head (conv0 768*128 + BN 256, conv1 128*768*25 + BN 1536, fc 768*1000 + 1000)
    # plus 8 more classes on the 2048-d fc = the FID network's count.
    aux = 768 * 128 + 256 + 128 * 768 * 25 + 1536 + 768 * 1000 + 1000
    expected = 27_161_264 - aux + 8 * (2048 + 1)
    _, model = inception_file
    assert sum(p.numel() for p in model.parameters()) == expected


def test_inception_hash_check_rejects_wrong_file(inception_file):
    path, _ = inception_file
    assert not file_digest(path).startswith("6726825d")
    with pytest.raises(DataError) as exc:
        load_inception(path)
    msg = str(exc.value)
    assert str(path) in msg and "6726825d" in msg and INCEPTION_ENV in msg


def test_inception_missing_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(DataError, match=INCEPTION_ENV):
        load_inception()
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv(INCEPTION_ENV, str(missing))
    with pytest.raises(DataError, match="not found") as exc:
        load_inception()
    assert str(missing) in str(exc.value)


def test_inception_loads_strictly_and_gives_pool3(inception_file, monkeypatch):
    path, reference = inception_file
    monkeypatch.setenv(INCEPTION_ENV, str(path))
    model = load_inception(expected_sha256_prefix=file_digest(path)[:8], device="cpu")  # accepted prefix
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats, probs = inception_features(images, model, batch_size=1)
    assert feats.shape == (2, POOL3_DIM) and probs.shape == (2, N_CLASSES)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 averages ReLU outputs
    torch.testing.assert_close(probs.sum(1), torch.ones(2), atol=1e-5, rtol=0)
    with torch.no_grad():
        direct = model.pool3(preprocess_for_inception(images[1:]))
    torch.testing.assert_close(feats[1:], direct, atol=1e-4, rtol=1e-4)


def test_inception_state_dict_without_num_batches_tracked_loads_strictly(inception_file):
    # Older state dicts (possibly the pytorch-fid file) lack BatchNorm's num_batches_tracked; a plain
    # dict without _metadata must still load strictly, as it does for pytorch-fid.
    _, reference = inception_file
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    FIDInceptionV3().load_state_dict(state, strict=True)


def test_inception_hash_bypass_still_rejects_non_inception_file(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(DataError, match="not a FID Inception-v3 state dict"):
        load_inception(bogus, expected_sha256_prefix=None)


def test_fid_avg_pool_excludes_padding():
    # TF's average pool ignores padded zeros: a constant map stays constant at the borders.
    x = torch.full((1, 2, 5, 5), 3.0)
    torch.testing.assert_close(_avg_pool_3x3(x), x)


def test_preprocess_for_inception():
    grey = torch.tensor([-1.0, 0.0, 0.5, 1.0]).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    out = preprocess_for_inception(grey)
    assert out.shape == (4, 3, 299, 299)
    expected = 2 * torch.round((grey[:, 0, 0, 0] + 1) / 2 * 255) / 255 - 1  # 8-bit levels
    torch.testing.assert_close(out.amin(dim=(1, 2, 3)), expected)
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), expected)
    unit = preprocess_for_inception((grey + 1) / 2, input_range="zero_one", quantize=False)
    torch.testing.assert_close(unit[:, 0], grey[:, 0, :1, :1].expand(4, 299, 299))
    with pytest.raises(DataError, match="input_range"):
        preprocess_for_inception(grey, input_range="0_255")
