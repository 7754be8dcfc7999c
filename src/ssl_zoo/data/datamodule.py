"""One LightningDataModule for every dataset and method.

Datasets arrive as partials (Hydra ``_partial_: true``) that take ``transform=``; the
method's augmentation and collate (crops, iBOT masks) are injected by ``ssl_zoo.train``,
so a data config never knows which method uses it. The kNN evaluation reads two labeled
splits with the deterministic eval transform: a memory bank and queries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo import distributed

DatasetFactory = Callable[..., Dataset]


class SSLDataModule(L.LightningDataModule):
    """Args:
    train_set: factory of the pretraining dataset (labels optional).
    knn_train_set, knn_val_set: factories of the labeled memory bank and query splits;
        both ``None`` disables the kNN evaluation.
    batch_size: images per device per step (the global batch is batch_size x devices x
        gradient accumulation; the lr is scaled from the global batch).
    num_workers: dataloader processes per device.
    train_transform, eval_transform, collate: set by ``ssl_zoo.train`` from the method's
        augmentation config.
    knn_batch_size: images per feature-extraction batch.
    image_size, local_image_size, mean, std, eval_crop_fraction: the geometry and
        colour statistics of this dataset, read by the augmentation configs
        (``${data.image_size}``); global/local crop sizes default to these.
    """

    def __init__(
        self,
        train_set: DatasetFactory,
        knn_train_set: DatasetFactory | None = None,
        knn_val_set: DatasetFactory | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        collate: Callable | None = None,
        knn_batch_size: int = 256,
        pin_memory: bool = False,
        image_size: int = 224,
        local_image_size: int = 96,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        eval_crop_fraction: float = 0.875,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if (knn_train_set is None) != (knn_val_set is None):
            raise ValueError("data.knn_train_set and data.knn_val_set must be set together (or both null)")
        self.train_factory = train_set
        self.knn_train_factory = knn_train_set
        self.knn_val_factory = knn_val_set
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.collate = collate
        self.knn_batch_size = knn_batch_size
        self.pin_memory = pin_memory
        self.image_size = image_size
        self.local_image_size = local_image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.eval_crop_fraction = eval_crop_fraction
        self.train_set: Dataset | None = None
        self.knn_train: Dataset | None = None
        self.knn_val: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.train_factory(transform=self.train_transform)
            if len(self.train_set) < self.batch_size:
                raise ValueError(
                    f"the training set has {len(self.train_set)} images, fewer than "
                    f"data.batch_size={self.batch_size}: lower data.batch_size or add data"
                )
        if self.knn_train_factory is not None and self.knn_train is None:
            self.knn_train = self.knn_train_factory(transform=self.eval_transform)
            self.knn_val = self.knn_val_factory(transform=self.eval_transform)

    @property
    def has_knn(self) -> bool:
        return self.knn_train_factory is not None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=train and self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True, collate_fn=self.collate)

    def knn_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """Memory-bank and query loaders over this process's share of each split
        (every world_size-th image), for ``ssl_zoo.callbacks.knn`` to gather."""
        self.setup()
        shards = []
        for dataset in (self.knn_train, self.knn_val):
            indices = range(distributed.rank(), len(dataset), distributed.world_size())
            shards.append(self._loader(torch.utils.data.Subset(dataset, indices), self.knn_batch_size, train=False))
        return shards[0], shards[1]

    def num_classes(self) -> int:
        self.setup()
        classes = getattr(self.knn_train, "classes", None)
        if classes is None:
            raise ValueError("the kNN memory-bank dataset must expose `classes`")
        return len(classes)
