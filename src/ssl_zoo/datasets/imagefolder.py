"""Any directory tree of images as a dataset (``data=imagefolder``).

Labels come from first-level class folders when the tree has them (``root/<class>/**``,
torchvision ImageFolder style, any depth below the class folder); a tree with images
directly in the root is unlabeled (label -1), which is all pretraining needs. Images are
recognised by extension, case-insensitively (``ssl_zoo.datasets.images.IMAGE_EXTENSIONS``);
files and folders whose name starts with a dot are ignored; the order is the sorted
relative paths, the same on every machine. Other files are bad files (see images.py):
skipped and counted, or the run stops with ``on_bad_image=raise``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_zoo.datasets.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    BadImageLog,
    DataError,
    check_policy,
    has_image_extension,
    load_image,
    scan_files,
    warn_skipped,
)

log = logging.getLogger("ssl_zoo.data")

LABEL_MODES = ("auto", "folders", "none")
MAX_SUBSTITUTES = 50  # bad images in a row before a sample gives up
UNLABELED = -1

# Scans already done in this process, by (root, check_headers), with a fingerprint of
# every file's (path, size, mtime): the kNN memory bank is often the training folder
# itself; a changed tree is scanned again.
_SCANS: dict[tuple[str, bool], tuple[int, list[str], list[tuple[str, str]]]] = {}


def _walk(root: str) -> list[str]:
    """Relative posix paths of the regular files under root, sorted, no dot-files."""
    files = []
    for directory, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(directory, root)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if os.path.isfile(os.path.join(root, rel)):
                files.append(rel)
    return sorted(files)


def _fingerprint(root: str, files: list[str]) -> int:
    stats = []
    for rel in files:
        try:
            stat = os.stat(os.path.join(root, rel))
            stats.append((rel, stat.st_size, stat.st_mtime_ns))
        except OSError:
            stats.append((rel, -1, -1))
    return hash(tuple(stats))


def _scan(root: str, check_headers: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """(all files, bad (path, reason)) under root."""
    files = _walk(root)
    fingerprint = _fingerprint(root, files)
    cached = _SCANS.get((root, check_headers))
    if cached is not None and cached[0] == fingerprint:
        return cached[1], cached[2]
    _, bad = scan_files(((os.path.join(root, f), os.path.join(root, f)) for f in files), check_headers)
    _SCANS[(root, check_headers)] = (fingerprint, files, bad)
    return files, bad


class ImageFolder(Dataset):
    """Images under ``root``, with class-folder labels or unlabeled.

    Args:
        root: the directory.
        transform: applied to the (3, H, W) uint8 RGB image; a transform with
            ``max_decode_reduction(width, height)`` lets JPEGs be decoded smaller.
        labels: "auto" (class folders if no image sits directly in root, else -1),
            "folders" (class folders required: the kNN splits) or "none" (all -1).
        on_bad_image: "skip" (default: drop and count bad files; a sample whose file
            fails to decode is replaced by another random one) or "raise".
        check_headers: open every file's header at construction (~0.1-0.2 ms per file) so
            non-images, empty and truncated files and decompression bombs are dropped
            before training; false only finds bad files when they are decoded.
        config_key: the config key of ``root`` (for error messages).

    Attributes:
        classes: class folder names, index = label (empty when unlabeled).
        root: absolute path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        labels: str = "auto",
        on_bad_image: str = "skip",
        check_headers: bool = True,
        config_key: str = "data.root",
    ) -> None:
        if root is None or str(root) == "":
            raise DataError(f"{config_key} is not set: give the directory of images, e.g. {config_key}=/data/photos")
        if labels not in LABEL_MODES:
            raise DataError(f"labels must be one of {list(LABEL_MODES)}, got {labels!r}")
        self.on_bad_image = check_policy(on_bad_image)
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.config_key = config_key
        # The absolute path only when the user gave a relative one (it says where that is).
        where = f"{config_key}={root}" if os.path.isabs(str(root)) and str(root) == self.root \
            else f"{config_key}={root} ({self.root})"
        if not os.path.exists(self.root):
            raise DataError(f"{where} does not exist: expected a directory of images (class subfolders optional)")
        if not os.path.isdir(self.root):
            raise DataError(f"{where} is a file, not a directory: expected a directory of images")

        files, bad = _scan(self.root, check_headers)
        images = [f for f in files if has_image_extension(f)]
        if not images:
            found = f"; found {len(files)} other file(s), e.g. {files[0]}" if files else ""
            raise DataError(
                f"no images ({', '.join(IMAGE_EXTENSIONS[:6])}, ...) under {where}{found}: "
                f"expected an image tree (class subfolders optional)"
            )
        if bad and self.on_bad_image == "raise":
            name, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad file(s) under {self.root})" if len(bad) > 1 else ""
            raise BadImageError(name, f"{reason}{more}; data.on_bad_image=skip skips and counts them")

        in_root = [f for f in images if "/" not in f]
        labeled = labels == "folders" or (labels == "auto" and not in_root)
        if labels == "folders" and in_root:
            raise DataError(
                f"{where} must hold class folders (labels=folders, e.g. for kNN), but "
                f"{len(in_root)} image(s) sit directly in it, e.g. {in_root[0]}: move "
                f"them into <class>/ folders"
            )
        self.classes = sorted({f.split("/", 1)[0] for f in images}) if labeled else []
        index = {name: i for i, name in enumerate(self.classes)}

        bad_names = {name for name, _ in bad}
        good = [f for f in images if os.path.join(self.root, f) not in bad_names]
        if not good:
            raise DataError(
                f"all {len(images)} image file(s) under {where} are bad, e.g. "
                + "; ".join(f"{os.path.relpath(n, self.root)} ({r})" for n, r in bad[:3])
                + ": replace or remove them, or point the key at another folder"
            )
        # numpy arrays, not lists of str: forked workers share them without touching
        # millions of reference counts (copy-on-write stays shared).
        self._paths = np.array([f.encode() for f in good])
        self._labels = np.array(
            [index[f.split("/", 1)[0]] if labeled else UNLABELED for f in good], dtype=np.int64
        )
        self.transform = transform
        self.bad_log = BadImageLog(bad)
        warn_skipped(bad, self.root)
        log.info(
            "data: %d images under %s (%s)", len(good), self.root,
            f"{len(self.classes)} classes" if labeled else "unlabeled",
        )  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self._paths[index].decode())

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def __getitem__(self, index: int):
        reduction = getattr(self.transform, "max_decode_reduction", None)
        for _ in range(MAX_SUBSTITUTES):
            path = self.path(index)
            try:
                image = load_image(path, reduction=reduction)
            except BadImageError as err:
                if not os.path.isdir(self.root):
                    # Not a bad file: the whole tree went away (moved, deleted, unmounted).
                    # Substituting other images of it would only fail 50 times over.
                    raise DataError(
                        f"{self.config_key}={self.root} is gone: it held {len(self)} images when the run "
                        f"started, and {path} cannot be read now (moved, deleted or unmounted during the run)"
                    ) from None
                if self.on_bad_image == "raise":
                    raise BadImageError(err.path, f"{err.reason} (data.on_bad_image=raise)") from None
                self.bad_log.record(err.path, err.reason)
                index = int(torch.randint(len(self), ()))
                continue
            label = self.label(index)
            return (self.transform(image) if self.transform is not None else image), label
        raise DataError(
            f"{MAX_SUBSTITUTES} images in a row failed to decode under {self.root} "
            f"(last: {path}): the data looks broken; see the warnings above"
        )

    def bad_images(self) -> list[tuple[str, str]]:
        return self.bad_log.entries()


def optional_folder(root: str | None, **kwargs) -> Callable[..., ImageFolder] | None:
    """A factory of ImageFolder(root, **kwargs, transform=...), or None when root is None:
    how a data config makes a split optional (``knn_train_root: null`` disables kNN)."""
    if root is None:
        return None
    return functools.partial(ImageFolder, root, **kwargs)
