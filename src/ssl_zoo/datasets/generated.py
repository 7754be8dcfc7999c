"""The base of the embedded procedural datasets: validated arguments, balanced labels,
chunked deterministic rendering, uint8 storage. A generator only implements ``render``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val")


class GeneratedDataset(Dataset):
    """Base: validated arguments, balanced labels, chunked rendering, uint8 storage.

    Args:
        split: "train" or "val" (independent random streams).
        num_images: balanced over classes (counts differ by at most 1).
        image_size: side in pixels (>= ``min_image_size``).
        num_classes: 2 to ``len(class_names)``.
        seed: the images are a deterministic function of (seed, split).
        transform: applied to the (3, H, W) uint8 image in __getitem__.
    """

    class_names: tuple[str, ...] = ()
    min_image_size = 16
    chunk = 512  # images rendered at once: bounds the float work arrays

    def __init__(
        self,
        split: str = "train",
        num_images: int = 10000,
        image_size: int = 32,
        num_classes: int = 10,
        seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        for key, value, low in (
            ("num_images", num_images, 1), ("image_size", image_size, self.min_image_size), ("seed", seed, 0)
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        most = len(self.class_names)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= most:
            raise ValueError(f"num_classes must be an int in [2, {most}], got {num_classes!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform)}")
        self.split, self.image_size, self.seed, self.transform = split, image_size, seed, transform
        self.classes = list(self.class_names[:num_classes])
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)]))
        labels = rng.permutation(np.arange(num_images) % num_classes)
        images = np.empty((num_images, 3, image_size, image_size), dtype=np.uint8)
        for start in range(0, num_images, self.chunk):
            stop = min(start + self.chunk, num_images)
            rendered = self.render(labels[start:stop], image_size, rng)
            images[start:stop] = np.clip(np.rint(rendered * 255), 0, 255).astype(np.uint8)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def render(self, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3, size, size) float images in [0, 1] for these labels."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image, label = self.images[index], int(self.labels[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, label
