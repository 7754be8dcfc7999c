"""Frozen features of a checkpoint's backbone on a labeled split, extracted once and cached.

The cache file is ``<cache dir>/<which>-<split>-<key>.pt`` (default cache dir:
``<checkpoint dir>/features/``), where ``key`` hashes everything the features depend on:
the checkpoint's bytes, the backbone (teacher or student), the dataset's description
(its config, or a folder's root and every file's size and mtime), the split and the
eval transform. Anything else (k, lr, shots) reuses the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

CACHE_VERSION = 1  # bump when the stored layout or the extraction changes


@dataclass
class Split:
    """A labeled dataset to extract, and what identifies its content for the cache.

    ``make`` builds the dataset only on a cache miss (rendering generated data costs
    seconds); ``description`` must identify its content without building it.
    """

    name: str  # "train" (the kNN memory bank / probe training set) or "val"
    make: Callable[[], Dataset]
    description: dict[str, Any]


@dataclass
class Features:
    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    path: Path | None  # the cache file (None: not cached)
    from_cache: bool


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(dataset) -> str:
    """sha256 over (relative path, size, mtime) of every image of an ImageFolder: a changed
    tree gets new features."""
    digest = hashlib.sha256(str(dataset.root).encode())
    for index in range(len(dataset)):
        path = dataset.path(index)
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, dataset.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def extract(
    backbone: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    description: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) CLS features and (N,) labels of ``dataset``, in its order."""
    from rich.progress import Progress

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    backbone.eval()
    feats, labels = [], []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=len(loader))
        for images, targets in loader:
            feats.append(backbone(images)["cls"].float())
            labels.append(torch.as_tensor(targets, dtype=torch.int64))
            bar.advance(task)
    return torch.cat(feats), torch.cat(labels)


def cached_features(
    backbone: torch.nn.Module,
    split: Split,
    key_parts: dict[str, Any],
    cache_dir: Path | None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
) -> Features:
    """The features of ``split`` from ``cache_dir`` when a file with the same key exists,
    else extracted (with a progress bar) and stored there. ``cache_dir`` None: no cache."""
    which = key_parts.get("which", "backbone")
    path = None
    if cache_dir is not None:
        key = cache_key(split=split.name, dataset=split.description, **key_parts)
        path = Path(cache_dir) / f"{which}-{split.name}-{key}.pt"
        if path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return Features(stored["features"], stored["labels"], list(stored["classes"]), path, True)
    dataset = split.make()
    classes = [str(c) for c in getattr(dataset, "classes", None) or []]
    if not classes:
        raise ValueError(
            f"the {split.name} split ({split.description.get('name', split.description)}) has no class "
            "labels: evaluation needs labeled class folders (data.train_root / data.val_root)"
        )
    features, labels = extract(
        backbone, dataset, batch_size, num_workers, f"{which} features, {split.name} ({len(dataset)} images)", progress
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # Written then renamed: an interrupted run never leaves a half file under the key.
        torch.save({"features": features, "labels": labels, "classes": classes,
                    "key": json.dumps({"split": split.name, "dataset": split.description, **key_parts}, default=str)}, tmp)
        os.replace(tmp, path)
    return Features(features, labels, classes, path, False)
