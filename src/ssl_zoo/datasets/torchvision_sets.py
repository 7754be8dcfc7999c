"""CIFAR-10 and STL-10 from torchvision (``data=cifar10``, ``data=stl10``).

torchvision reads the extracted archives under ``root``; with ``download=true`` it fetches
them first. Offline (the default, and every machine without internet) a missing archive
is a :class:`DataError` that says where the files were expected and the three ways to
provide them. Samples are (3, H, W) uint8 tensors straight from torchvision's arrays (no
PIL round trip), labels are ints (-1 for STL-10's unlabeled split).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from ssl_zoo.datasets.images import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"


def _missing(name: str, root: str, expected: str, url: str, config: str, cause: str) -> DataError:
    return DataError(
        f"{name} not found under {root}: expected {expected} ({cause}). Provide it by one of:\n"
        f"  - data={config} data.root={root} data.download=true on a machine with internet "
        f"(fetches {url});\n"
        f"  - downloading {url} elsewhere and extracting it into {root};\n"
        f"  - data=imagefolder data.root=<a folder of images> instead."
    )


def _build(
    factory: Callable,
    name: str,
    root: str,
    folder: str,
    expected: str,
    url: str,
    config: str,
    download: bool,
):
    root = os.path.abspath(os.path.expanduser(str(root)))
    try:
        return factory(root, download)
    except RuntimeError as err:
        if "not found" in str(err).lower() or "download=true" in str(err).lower():
            if os.path.isdir(os.path.join(root, folder)):
                cause = f"{folder}/ is there but incomplete or corrupted (checksum mismatch)"
            else:
                cause = (
                    "data.download=false"
                    if not download
                    else f"still missing after the download: {err}"
                )
            raise _missing(name, root, expected, url, config, cause) from None
        raise
    except OSError as err:  # urllib.error.URLError is an OSError: no network
        raise _missing(name, root, expected, url, config, f"the download failed: {err}") from None


class _ImageArrays(Dataset):
    """(image, label) from a (N, 3, H, W) uint8 tensor and its labels: what CIFAR-10 and
    STL-10 share once torchvision has read the archive."""

    def __init__(self, images: torch.Tensor, labels, classes, transform: Callable | None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image, label = self.images[index], int(self.labels[index])
        return (self.transform(image) if self.transform is not None else image), label


class CIFAR10(_ImageArrays):
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test images of 32 px, 10 classes.

    Args:
        root: directory holding ``cifar-10-batches-py/`` (the extracted archive).
        split: "train" or "test".
        download: fetch the archive when it is missing (needs internet).
        transform: applied to the (3, 32, 32) uint8 image.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        download: bool = False,
        transform: Callable | None = None,
    ):
        if split not in ("train", "test"):
            raise DataError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        ds = _build(
            lambda r, d: TorchvisionCIFAR10(r, train=split == "train", download=d),
            "CIFAR-10", root, "cifar-10-batches-py",
            "cifar-10-batches-py/ with data_batch_1..5 and test_batch (the extracted cifar-10-python.tar.gz)",
            CIFAR10_URL, "cifar10", download,
        )  # fmt: skip
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 3, 32, 32), views
        super().__init__(images, ds.targets, ds.classes, transform)


class STL10(_ImageArrays):
    """STL-10 (Coates et al. 2011): 96 px, 10 classes; 5,000 labeled train, 8,000 test
    and 100,000 unlabeled images (label -1) for pretraining.

    Args:
        root: directory holding ``stl10_binary/`` (the extracted archive).
        split: "train", "test", "unlabeled" or "train+unlabeled".
        download: fetch the archive (2.6 GB) when it is missing (needs internet).
        transform: applied to the (3, 96, 96) uint8 image.
    """

    SPLITS = ("train", "test", "unlabeled", "train+unlabeled")

    def __init__(
        self,
        root: str,
        split: str = "train+unlabeled",
        download: bool = False,
        transform: Callable | None = None,
    ):
        if split not in self.SPLITS:
            raise DataError(f"STL-10 split must be one of {list(self.SPLITS)}, got {split!r}")
        from torchvision.datasets import STL10 as TorchvisionSTL10

        ds = _build(
            lambda r, d: TorchvisionSTL10(r, split=split, download=d),
            "STL-10", root, "stl10_binary",
            "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
            "unlabeled_X.bin (the extracted stl10_binary.tar.gz)",
            STL10_URL, "stl10", download,
        )  # fmt: skip
        images = torch.from_numpy(ds.data)  # (N, 3, 96, 96), rows already upright
        super().__init__(images, ds.labels, ds.classes, transform)
