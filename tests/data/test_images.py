"""The image loader and bad files: every kind of bad input, skip (counted) and raise
(named), in the training process and through DataLoader workers."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssl_zoo.datasets.imagefolder import ImageFolder
from ssl_zoo.datasets.images import (
    BadImageError,
    BadImageLog,
    DataError,
    bad_image_report,
    check_header,
    load_image,
)


def _jpeg(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny 1-bit PNG of width x height pixels (all black), streamed through zlib."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]
    return _png(width, height, 1, 0, b"".join(parts))


def rgb16_png(width: int, height: int) -> tuple[bytes, np.ndarray]:
    values = (np.arange(width * height * 3, dtype=np.uint32) * 997 % 65536).astype(">u2")
    values = values.reshape(height, width, 3)
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(height))
    return _png(width, height, 16, 2, zlib.compress(rows)), values.astype(np.uint16)


# Setup-time bad files (header, size, extension) and decode-time ones (data).
BAD_AT_SETUP = {"empty.jpg", "notes.txt", "fake.png", "corrupt_header.jpg", "bomb.png", "bomb_warn.png", "truncated.jpg"}
BAD_AT_DECODE = {"corrupt_data.jpg"}  # complete file, broken data: found when decoded
VALID_ODD = {"gray.png", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "rgb16.png", "tiny.png"}


def make_bad_tree(root: Path, n_good: int = 6) -> dict:
    """Class folders a/ and b/ with good JPEGs, and every bad and odd kind of file in a/.

    Returns the names of the bad files and the good-image count.
    """
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_good):
            (root / cls / f"good_{i}.jpg").write_bytes(_jpeg(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)))
    d = root / "a"
    good = _jpeg(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    sos = good.index(b"\xff\xda")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "corrupt_data.jpg").write_bytes(good[: sos + 14] + b"\xff\xc4" * 50 + b"\xff\xd9")
    (d / "corrupt_header.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image\n")
    (d / "fake.png").write_text("a text file with an image extension\n")
    (d / "bomb.png").write_bytes(bomb_png(20_000, 10_000))  # 200 M px > 2 x limit: error
    (d / "bomb_warn.png").write_bytes(bomb_png(10_000, 9_000))  # 90 M px > limit: warning
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L").save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    palette = Image.fromarray(rng.integers(0, 16, (20, 30), dtype=np.uint8), "P")
    palette.putpalette(list(range(48)) * 16)
    palette.info["transparency"] = 3
    palette.save(d / "palette.png", transparency=3)
    Image.fromarray((rng.integers(0, 65536, (20, 30))).astype(np.uint16)).save(d / "gray16.png")
    (d / "rgb16.png").write_bytes(rgb16_png(30, 20)[0])
    Image.fromarray(np.full((2, 3, 3), 128, np.uint8)).save(d / "tiny.png")
    (root / ".hidden").write_text("ignored")  # dot-files are not part of the tree
    return {
        "bad": BAD_AT_SETUP | BAD_AT_DECODE,
        "usable": 2 * n_good + len(VALID_ODD),
    }


@pytest.fixture
def bad_tree(tmp_path):
    root = tmp_path / "tree"
    info = make_bad_tree(root)
    return root, info


# ------------------------------------------------------------------- the loader


def test_every_valid_kind_becomes_rgb_uint8(bad_tree):
    root, _ = bad_tree
    for name in sorted(VALID_ODD) + ["good_0.jpg"]:
        image = load_image(root / "a" / name)
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, name


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    expected = np.rint(values / 257).astype(np.uint8)
    assert (image[0].numpy() == expected).all() and (image[1] == image[0]).all()
    data, rgb = rgb16_png(7, 3)
    image = load_image(data, name="rgb16.png").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(image - rgb / 257).max() <= 1  # Pillow keeps the high byte: v >> 8


def test_alpha_is_composited_over_black_and_palette_transparency(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 0, 128, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image[:, 0, 0].tolist() == [0, 0, 0]  # fully transparent: black, not the hidden 200
    assert abs(int(image[0, 0, 1]) - 100) <= 1  # half
    assert image[:, 1, 1].tolist() == [200, 200, 200]  # opaque


def test_cmyk_and_gray_match_pil_conversion(bad_tree):
    root, _ = bad_tree
    for name in ("cmyk.jpg", "gray.png"):
        expected = np.asarray(Image.open(root / "a" / name).convert("RGB"))
        assert (load_image(root / "a" / name).permute(1, 2, 0).numpy() == expected).all()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty file"),
        ("fake.png", "not an image"),
        ("corrupt_header.jpg", "unreadable header"),
        ("bomb.png", "decompression-bomb"),
        ("bomb_warn.png", "decompression-bomb"),
        ("truncated.jpg", "truncated"),
        ("corrupt_data.jpg", "cannot decode"),
    ],
)
def test_bad_files_raise_with_the_path_and_the_reason(bad_tree, name, reason):
    root, _ = bad_tree
    path = root / "a" / name
    with pytest.raises(BadImageError, match=reason) as info:
        load_image(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    if name in BAD_AT_SETUP:  # the cheap header check already finds these
        with pytest.raises(BadImageError):
            check_header(path)
    else:
        assert check_header(path) == Image.open(path).size


def test_bad_image_log_counts_distinct_files_across_processes(tmp_path):
    log = BadImageLog([("x.jpg", "empty")])
    log.record("y.jpg", "truncated")
    log.record("y.jpg", "truncated")  # twice (two epochs): one file
    report = log.report()
    assert report["count"] == 2 and report["examples"] == ["x.jpg", "y.jpg"]
    assert report["reasons"]["y.jpg"] == "truncated"
    assert bad_image_report([("a", "r"), ("a", "r"), ("b", "s")])["count"] == 2


# ------------------------------------------------------- through ImageFolder


def _check_batches(loader, expected_samples):
    seen = 0
    for images, labels in loader:
        seen += len(images)
        for image in images:
            assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert set(labels.tolist()) <= {0, 1}
    assert seen == expected_samples


def _same_size(image):  # collatable: every image to 8x8
    return torch.nn.functional.interpolate(image[None].float(), size=(8, 8))[0].to(torch.uint8)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_counts_every_bad_file_and_keeps_batches_full(bad_tree, num_workers):
    root, info = bad_tree
    dataset = ImageFolder(root, transform=_same_size, on_bad_image="skip")
    assert dataset.classes == ["a", "b"]
    # dropped at setup: the header kinds; decoded later: the data kinds
    assert len(dataset) == info["usable"] + len(BAD_AT_DECODE)
    assert {Path(n).name for n, _ in dataset.bad_images()} == BAD_AT_SETUP
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, shuffle=False)
    _check_batches(loader, len(dataset))  # every index gives a sample: substitutes fill in
    report = dataset.bad_log.report()
    assert report["count"] == len(info["bad"])
    names = {Path(n).name for n, _ in dataset.bad_images()}
    assert names == info["bad"]
    assert all(Path(e).is_absolute() for e in report["examples"])


def test_raise_names_the_file_at_setup(bad_tree):
    root, _ = bad_tree
    with pytest.raises(BadImageError, match=r"bad image .*(empty|notes|fake|corrupt_header|bomb)") as info:
        ImageFolder(root, on_bad_image="raise")
    assert "data.on_bad_image=skip" in str(info.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_raise_names_the_file_when_decoding_in_workers(tmp_path, num_workers):
    make_bad_tree(tmp_path)
    for name in BAD_AT_SETUP:
        (tmp_path / "a" / name).unlink()
    dataset = ImageFolder(tmp_path, transform=_same_size, on_bad_image="raise")
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers)
    with pytest.raises(Exception, match=r"corrupt_data\.jpg.*cannot decode"):
        for _ in loader:
            pass


def test_without_header_checks_bad_files_are_found_when_decoded(bad_tree):
    root, info = bad_tree
    dataset = ImageFolder(root, transform=_same_size, check_headers=False)
    # only the extension and empty files are known at setup
    assert {Path(n).name for n, _ in dataset.bad_images()} == {"notes.txt", "empty.jpg"}
    assert len(dataset) == info["usable"] + len(info["bad"]) - 2
    _check_batches(DataLoader(dataset, batch_size=5), len(dataset))
    assert {Path(n).name for n, _ in dataset.bad_images()} == info["bad"]


def test_policy_is_checked():
    with pytest.raises(DataError, match="on_bad_image"):
        ImageFolder(".", on_bad_image="ignore")
