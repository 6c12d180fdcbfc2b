"""Image folders, CIFAR-10 batch files and image transforms (src/lcssm/data/{images,cifar10,transforms}.py)."""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcssm.data.cifar10 import load_cifar10, safe_unpickle
from lcssm.data.images import ImageFolder, load_image_dataset, scan_images, split_holdout
from lcssm.data.transforms import center_crop_resize, random_flip, to_float
from lcssm.device import make_generator
from lcssm.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def solid(h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --- image folders: geometry -------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 7])
def test_any_size_and_aspect_gives_square_resolution(tmp_path, resolution):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 40), (40, 20), (33, 17), (64, 64), (5, 5), (1, 9)]):
        ext = ".png" if i % 2 else ".jpg"
        save(tmp_path / f"img{i}{ext}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    x = ImageFolder(tmp_path, resolution=resolution).load_all()
    assert x.dtype == torch.uint8
    assert tuple(x.shape) == (6, 3, resolution, resolution)


def test_recursive_scan_is_sorted_and_skips_hidden_and_other_files(tmp_path):
    colours = {"a.png": RED, "b/a/y.png": GREEN, "b/x.bmp": BLUE, "c.PNG": (10, 20, 30)}
    for rel, colour in colours.items():
        save(tmp_path / rel, solid(6, 6, colour))
    save(tmp_path / ".hidden.png", solid(6, 6, RED))
    save(tmp_path / ".ipynb_checkpoints" / "z.png", solid(6, 6, RED))
    (tmp_path / "notes.txt").write_text("not an image")

    folder = ImageFolder(tmp_path, resolution=6, random_flip=False)
    x = folder.load_all()
    assert [p.relative_to(tmp_path).as_posix() for p in folder.paths] == list(colours)
    expected = torch.tensor(list(colours.values()), dtype=torch.uint8)[:, :, None, None].expand(-1, -1, 6, 6)
    assert torch.equal(x, expected)


@pytest.mark.parametrize("resolution", [30, 16])
@pytest.mark.parametrize("portrait", [False, True])
def test_center_crop_removes_the_outer_thirds(tmp_path, resolution, portrait):
    """Left/right (or top/bottom) thirds are red/blue; only the green middle square may survive."""
    a = np.concatenate([solid(30, 30, RED), solid(30, 30, GREEN), solid(30, 30, BLUE)], axis=1)
    if portrait:
        a = a.transpose(1, 0, 2).copy()
    save(tmp_path / "thirds.png", a)
    x = ImageFolder(tmp_path, resolution=resolution).load_all()[0].int()
    # A constant region resizes to itself up to the filter's fixed-point rounding (one level).
    assert x[0].max() <= 1 and x[2].max() <= 1
    assert x[1].min() >= 254


def test_center_crop_offset_is_exact():
    """31 wide x 10 high: the square is columns (31 - 10) // 2 = 10 .. 19."""
    a = np.zeros((10, 31), np.uint8)
    a[:] = np.arange(31, dtype=np.uint8) * 8
    out = np.asarray(center_crop_resize(Image.fromarray(a), 10))
    assert np.array_equal(out, np.broadcast_to(np.arange(10, 20, dtype=np.uint8) * 8, (10, 10)))


def test_downscaling_is_antialiased(tmp_path):
    """A 1-pixel checkerboard shrunk 8x must average to mid-grey (point sampling gives 0 or 255)."""
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    save(tmp_path / "board.png", board)
    x = ImageFolder(tmp_path, resolution=8, channels=1).load_all().double()
    assert (x - 127.5).abs().max() <= 1.0


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 3 means "rotate 180 degrees to display": red-left/blue-right must come out mirrored."""
    a = np.concatenate([solid(16, 8, RED), solid(16, 8, BLUE)], axis=1)
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(a).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    x = ImageFolder(tmp_path, resolution=16).load_all()[0].int()
    left, right = x[:, :, 2:6].float().mean((1, 2)), x[:, :, 10:14].float().mean((1, 2))
    assert left[2] > 200 and left[0] < 50  # blue
    assert right[0] > 200 and right[2] < 50  # red


# --- image folders: colour modes ---------------------------------------------------------------------


def test_rgb_to_greyscale_uses_itu_601_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 90]]], np.uint8)
    rgb = np.repeat(rgb, 4, axis=0)  # 4x4
    save(tmp_path / "c.png", rgb)
    x = ImageFolder(tmp_path, resolution=4, channels=1).load_all()
    assert x.shape == (1, 1, 4, 4)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(x[0, 0].numpy() - luma).max() <= 1.0


def test_greyscale_file_to_rgb_repeats_the_channel(tmp_path):
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    save(tmp_path / "g.png", grey)
    x = ImageFolder(tmp_path, resolution=4, channels=3).load_all()[0]
    for c in range(3):
        assert np.array_equal(x[c].numpy(), grey)


def test_alpha_palette_and_16_bit_inputs(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (40, 80, 120)
    rgba[..., 3] = np.arange(16).reshape(4, 4) * 16  # alpha must not leak into the colour
    save(tmp_path / "a_rgba.png", rgba)
    two_colours = np.concatenate([solid(2, 4, (200, 100, 50)), solid(2, 4, (10, 20, 30))])
    pal = Image.fromarray(two_colours).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "b_pal.png", transparency=b"\x00\x80")  # tRNS as bytes: PIL warns going to RGB
    sixteen = np.array([[0, 257 * 128, 65535, 300]] * 4, np.uint16)  # PIL's own L conversion clips >255
    Image.fromarray(sixteen).save(tmp_path / "c_16bit.png")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = ImageFolder(tmp_path, resolution=4, channels=3).load_all()
    assert torch.equal(x[0], torch.tensor([40, 80, 120], dtype=torch.uint8)[:, None, None].expand(3, 4, 4))
    assert torch.equal(x[1], torch.from_numpy(two_colours).permute(2, 0, 1))
    expected_16 = np.round(sixteen[0].astype(np.float64) * 255 / 65535)
    assert np.array_equal(x[2, 0, 0].numpy(), expected_16)


# --- corrupt, empty and missing inputs ---------------------------------------------------------------


def make_corrupt_folder(root: Path) -> np.ndarray:
    good = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save(root / "good.png", good)
    data = png_bytes(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "noise.jpg").write_bytes(np.random.default_rng(3).bytes(600))
    return good


def test_corrupt_files_are_skipped_with_a_warning_naming_each(tmp_path):
    good = make_corrupt_folder(tmp_path)
    folder = ImageFolder(tmp_path, resolution=8)
    with pytest.warns(UserWarning) as record:
        x = folder.load_all()
    messages = " ".join(str(w.message) for w in record)
    assert "truncated.png" in messages and "noise.jpg" in messages
    assert [p.name for p in folder.paths] == ["good.png"]
    assert torch.equal(x, torch.from_numpy(good).permute(2, 0, 1)[None])
    assert len(folder) == 1
    with pytest.warns(UserWarning):  # a fresh folder skips the same files: deterministic
        assert torch.equal(ImageFolder(tmp_path, resolution=8).load_all(), x)


def test_corrupt_file_is_an_error_when_strict(tmp_path):
    make_corrupt_folder(tmp_path)
    with pytest.raises(DataError, match="noise.jpg"):  # first in sorted order
        ImageFolder(tmp_path, resolution=8, strict=True).load_all()
    (tmp_path / "noise.jpg").unlink()
    with pytest.raises(DataError, match="truncated.png"):
        ImageFolder(tmp_path, resolution=8, strict=True).load_all()


def test_all_files_corrupt_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n nonsense")
    with pytest.warns(UserWarning, match="x.png"), pytest.raises(DataError, match="could be read"):
        ImageFolder(tmp_path, resolution=8).load_all()


def test_empty_missing_and_non_folder_paths_are_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        ImageFolder(tmp_path, resolution=8)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        ImageFolder(tmp_path, resolution=8)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope", resolution=8)
    with pytest.raises(DataError, match="not a folder"):
        scan_images(tmp_path / "readme.txt")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"resolution": 0}, "resolution"), ({"channels": 2}, "channels"), ({"scale": "unit"}, "zero_one")],
)
def test_bad_arguments_name_the_value_and_choices(tmp_path, kwargs, match):
    save(tmp_path / "a.png", solid(4, 4, RED))
    with pytest.raises(DataError, match=match):
        ImageFolder(tmp_path, **{"resolution": 4, **kwargs})


# --- float conversion and flips ----------------------------------------------------------------------


def test_to_float_endpoints_and_affine_map():
    x = torch.arange(256, dtype=torch.uint8)
    zo, mo = to_float(x, "zero_one"), to_float(x, "minus_one_one")
    assert zo.dtype == mo.dtype == torch.float32
    assert zo[0] == 0 and zo[-1] == 1 and mo[0] == -1 and mo[-1] == 1
    torch.testing.assert_close(mo, 2 * zo - 1, rtol=0, atol=1e-6)
    torch.testing.assert_close(zo, torch.arange(256) / 255.0)
    with pytest.raises(DataError, match="uint8"):
        to_float(x.float(), "zero_one")
    with pytest.raises(DataError, match="minus_one_one"):
        to_float(x, "bad")


def test_random_flip_flips_width_and_is_reproducible():
    n = 4000
    x = torch.arange(n * 2 * 3 * 5).reshape(n, 2, 3, 5)
    assert torch.equal(random_flip(x, make_generator(0), p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, make_generator(0), p=0.0), x)

    y = random_flip(x, make_generator(7))
    assert torch.equal(y, random_flip(x, make_generator(7)))
    assert not torch.equal(y, random_flip(x, make_generator(8)))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image is either untouched or mirrored left-right
    # Binomial(n, 1/2): flipped fraction within 5 standard errors of 1/2.
    assert abs(flipped.double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)
    with pytest.raises(DataError, match="probability"):
        random_flip(x, make_generator(0), p=1.5)


def test_folder_batch_scales_and_flips(tmp_path):
    a = np.zeros((4, 4, 3), np.uint8)
    a[:, :2] = 255  # left half white
    save(tmp_path / "half.png", a)
    plain = ImageFolder(tmp_path, resolution=4, scale="zero_one", random_flip=False)
    assert torch.equal(plain.batch([0, 0]), to_float(plain.load_all()[[0, 0]], "zero_one"))

    flipping = ImageFolder(tmp_path, resolution=4, scale="minus_one_one")
    with pytest.raises(DataError, match="Generator"):
        flipping.batch([0])
    b = flipping.batch(torch.zeros(64, dtype=torch.long), make_generator(0))
    assert b.min() == -1 and b.max() == 1
    left_white = b[:, 0, 0, 0] == 1
    assert 0 < int(left_white.sum()) < 64
    assert torch.equal(b[~left_white], b[left_white][:1].flip(-1).expand(int((~left_white).sum()), -1, -1, -1))


# --- held-out split ----------------------------------------------------------------------------------


def test_split_holdout_partitions_deterministically():
    train, test = split_holdout(103, 0.2, seed=5)
    assert len(test) == round(0.2 * 103) and len(train) == 103 - len(test)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(103))
    again = split_holdout(103, 0.2, seed=5)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, split_holdout(103, 0.2, seed=6)[1])
    assert len(split_holdout(10, 0.0, seed=0)[1]) == 0
    assert len(split_holdout(10, 0.01, seed=0)[1]) == 1
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match="fraction"):
            split_holdout(10, bad, seed=0)
    with pytest.raises(DataError):
        split_holdout(1, 0.5, seed=0)


# --- CIFAR-10 ----------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (opcodes U/T), as in the official CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj, numpy_core: str = "numpy.core") -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", f"c{numpy_core}.multiarray\n".encode())


FORMATS = ["py2", "py2-numpy2", "protocol2", "protocol4", "protocol5"]


def dump_batch(path: Path, data: np.ndarray, labels: list[int], fmt: str) -> None:
    batch = {
        b"batch_label": b"synthetic batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if fmt == "py2":
        path.write_bytes(py2_pickle(batch))
    elif fmt == "py2-numpy2":
        path.write_bytes(py2_pickle(batch, "numpy._core"))
    else:
        path.write_bytes(pickle.dumps(batch, protocol=int(fmt[-1])))


def make_cifar(root: Path, fmt: str = "py2", per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write data_batch_1..5 and test_batch; return the expected (N, 3072) rows and labels per file."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        dump_batch(d / name, data, labels, fmt)
        written[name] = (data, np.array(labels))
    return written


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar10_round_trips_pixel_exactly(tmp_path, fmt):
    written = make_cifar(tmp_path, fmt)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        x, y = load_cifar10(root, "train")
        rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert tuple(x.shape) == (15, 3, 32, 32)
        assert np.array_equal(x.reshape(15, 3072).numpy(), rows)
        assert np.array_equal(y.numpy(), np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)]))
    xt, yt = load_cifar10(tmp_path, "test")
    assert np.array_equal(xt.reshape(3, 3072).numpy(), written["test_batch"][0])
    assert np.array_equal(yt.numpy(), written["test_batch"][1])


def test_cifar10_rows_are_red_green_blue_planes_row_major(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1] = 201  # red plane, pixel (y=0, x=1)
    row[0, 1024 + 32] = 202  # green plane, pixel (y=1, x=0)
    row[0, 2048 + 31 * 32 + 30] = 203  # blue plane, pixel (y=31, x=30)
    dump_batch(d / "test_batch", row, [4], "py2")
    x, y = load_cifar10(tmp_path, "test")
    expected = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    expected[0, 0, 0, 1], expected[0, 1, 1, 0], expected[0, 2, 31, 30] = 201, 202, 203
    assert torch.equal(x, expected) and y.tolist() == [4]
    # As a PIL image (HWC), the same pixels carry pure red / green / blue.
    im = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    assert im.getpixel((1, 0)) == (201, 0, 0)
    assert im.getpixel((0, 1)) == (0, 202, 0)
    assert im.getpixel((30, 31)) == (0, 0, 203)


def test_cifar10_missing_files_are_named(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing: data_batch_3") as info:
        load_cifar10(tmp_path, "train")
    assert "cifar-10-batches-py" in str(info.value)
    load_cifar10(tmp_path, "test")  # the test split is still complete
    with pytest.raises(DataError, match="missing: test_batch"):
        load_cifar10(tmp_path / "empty", "test")
    with pytest.raises(DataError, match="valid: train, test"):
        load_cifar10(tmp_path, "val")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(evil)
    with pytest.raises(DataError, match=r"data_batch_2.*refusing to load global (posix|nt|os)\.system"):
        load_cifar10(tmp_path, "train")
    assert not marker.exists()
    assert pickle.loads(evil) == {b"data": 0, b"labels": []}  # the payload is live: it runs unrestricted
    assert marker.exists()


def test_pickle_cannot_rewrite_allowed_functions(tmp_path):
    """BUILD on an allowed global could otherwise set attributes of a shared function for good."""
    from numpy._core import numeric

    before = numeric._frombuffer.__defaults__
    attack = b"\x80\x02cnumpy._core.numeric\n_frombuffer\nN}X\x0c\x00\x00\x00__defaults__X\x01\x00\x00\x00x\x85s\x86b."
    (tmp_path / "p").write_bytes(attack)
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch pickle"):
        safe_unpickle(tmp_path / "p")
    assert numeric._frombuffer.__defaults__ == before


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2], "expected a pickled dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "b'labels'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(2, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
    ],
)
def test_malformed_batches_are_errors(tmp_path, obj, match):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=match):
        load_cifar10(tmp_path, "test")
    (d / "test_batch").write_bytes(pickle.dumps(obj)[:-1])  # no STOP opcode
    with pytest.raises(DataError, match="not a valid"):
        load_cifar10(tmp_path, "test")


# --- single entry point ------------------------------------------------------------------------------


def test_load_image_dataset_detects_cifar(tmp_path):
    make_cifar(tmp_path)
    train, _ = load_cifar10(tmp_path, "train")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert torch.equal(load_image_dataset(root, resolution=32, channels=3, scale="zero_one"), train)
    small = load_image_dataset(tmp_path, resolution=16, channels=1, scale="zero_one")
    assert tuple(small.shape) == (15, 1, 16, 16) and small.dtype == torch.uint8
    # Same pipeline as an image folder: the first CIFAR image written as a PNG gives the same pixels.
    save(tmp_path / "pngs" / "0.png", train[0].permute(1, 2, 0).numpy())
    assert torch.equal(small[0], ImageFolder(tmp_path / "pngs", resolution=16, channels=1).load_all()[0])


def test_load_image_dataset_detects_image_folder_and_rejects_the_rest(tmp_path):
    save(tmp_path / "imgs" / "a.png", solid(10, 20, GREEN))
    x = load_image_dataset(tmp_path / "imgs", resolution=8, channels=3, scale="minus_one_one")
    assert torch.equal(x, ImageFolder(tmp_path / "imgs", resolution=8).load_all())

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="neither a CIFAR-10 batch folder"):
        load_image_dataset(tmp_path / "text", resolution=8, channels=3, scale="zero_one")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="extract"):
        load_image_dataset(tmp_path / "cifar-10-python.tar.gz", resolution=8, channels=3, scale="zero_one")
    with pytest.raises(DataError, match="does not exist"):
        load_image_dataset(tmp_path / "nope", resolution=8, channels=3, scale="zero_one")
    with pytest.raises(DataError, match="zero_one"):
        load_image_dataset(tmp_path / "imgs", resolution=8, channels=3, scale="0-1")
