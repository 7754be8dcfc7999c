"""Image folders: labels from class folders or none, deterministic order, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.datasets.imagefolder import ImageFolder, optional_folder
from ssl_zoo.datasets.images import DataError


def _write(path, value=0, size=(12, 10), ext_case=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def test_class_folders_give_labels_in_sorted_order(tmp_path):
    for cls, names in {"dog": ["b.JPG", "a.jpeg", "deep/c.png"], "cat": ["z.PNG"]}.items():
        for name in names:
            _write(tmp_path / cls / name)
    dataset = ImageFolder(tmp_path)
    assert dataset.classes == ["cat", "dog"]
    rel = [os.path.relpath(dataset.path(i), tmp_path) for i in range(len(dataset))]
    assert rel == ["cat/z.PNG", "dog/a.jpeg", "dog/b.JPG", "dog/deep/c.png"]  # sorted, any case
    assert [dataset.label(i) for i in range(len(dataset))] == [0, 1, 1, 1]
    image, label = dataset[0]
    assert image.shape == (3, 10, 12) and image.dtype == torch.uint8 and label == 0


def test_images_in_the_root_make_an_unlabeled_tree(tmp_path):
    _write(tmp_path / "x.jpg")
    _write(tmp_path / "trip" / "y.jpg")
    dataset = ImageFolder(tmp_path)
    assert dataset.classes == [] and {dataset[i][1] for i in range(2)} == {-1}
    assert ImageFolder(tmp_path / "trip", labels="none")[0][1] == -1
    with pytest.raises(DataError, match="labels=folders.*x.jpg"):
        ImageFolder(tmp_path, labels="folders")


def test_missing_empty_and_file_roots_fail_with_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}.*does not exist.*directory of images"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images \(\.jpg, .*\) under .*empty.*expected an image tree"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no images.*readme.md"):
        ImageFolder(tmp_path / "docs")
    _write(tmp_path / "one.jpg")
    with pytest.raises(DataError, match="is a file"):
        ImageFolder(tmp_path / "one.jpg")
    with pytest.raises(DataError, match="data.knn_val_root is not set"):
        ImageFolder(None, config_key="data.knn_val_root")


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="all 1 image file.*bad.*empty"):
        ImageFolder(tmp_path)


def test_optional_folder_is_none_without_root(tmp_path):
    _write(tmp_path / "c" / "a.jpg")
    assert optional_folder(None, labels="folders") is None
    factory = optional_folder(str(tmp_path), labels="folders")
    assert factory(transform=None).classes == ["c"]


def test_the_shared_cifar10_folder(shared_cifar):
    dataset = ImageFolder(shared_cifar / "val", labels="folders")
    assert len(dataset) == 10_000 and len(dataset.classes) == 10
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and label == 0


@pytest.fixture
def shared_cifar():
    from tests.conftest import SHARED

    root = SHARED / "datasets" / "cifar10"
    if not (root / "val").is_dir():
        pytest.skip(f"no shared CIFAR-10 folder at {root}")
    return root
