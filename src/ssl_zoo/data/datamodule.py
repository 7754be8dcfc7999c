"""One LightningDataModule for every dataset and method.

Datasets arrive as partials (Hydra ``_partial_: true``) that take ``transform=``; the
method's augmentation and collate (crops, iBOT masks) are injected by ``ssl_zoo.train``,
so a data config never knows which method uses it. The kNN evaluation reads two labeled
splits with the deterministic eval transform: a memory bank and queries.

Map-style datasets are read in the order of an ``EpochSampler`` (``ssl_zoo.data.sampling``):
a pure function of (seed, epoch) sharded by rank, with per-sample augmentation seeds, so a
resumed run continues mid-epoch exactly (``resume_at``). Iterable ones (tar shards) shuffle
themselves and are told the batch size, worker count and rank (``configure``) so every
rank yields the same number of full batches. ``data.batch_size`` is per device;
``data.global_batch_size``, when set, is checked against it (:func:`check_batch_sizes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ssl_zoo.data.sampling import EpochSampler, SeededBatches, already_collated, batches_per_epoch
from ssl_zoo.datasets.images import DataError, bad_image_report
from ssl_zoo.parallel import collectives
from ssl_zoo.signals import WorkerInit

DatasetFactory = Callable[..., Dataset]


@runtime_checkable
class KnnData(Protocol):
    """What the kNN, online-probe and picture callbacks read of a datamodule: the labeled
    memory bank and query splits. :class:`SSLDataModule` has them; with another datamodule,
    or without the splits (``has_knn`` False), those callbacks stay off."""

    has_knn: bool  # both splits are configured
    knn_val: Dataset | None  # the queries, once set up

    def setup(self, stage: str | None = None) -> None: ...

    def knn_dataloaders(self) -> tuple[DataLoader, DataLoader]: ...

    def num_classes(self) -> int: ...


def knn_data(datamodule: Any) -> KnnData | None:
    """``datamodule`` when it has the labeled kNN splits, else None."""
    return datamodule if isinstance(datamodule, KnnData) and datamodule.has_knn else None


class SSLDataModule(L.LightningDataModule):
    """Args:
    train_set: factory of the pretraining dataset (labels optional).
    knn_train_set, knn_val_set: factories of the labeled memory bank and query splits;
        both ``None`` disables the kNN evaluation.
    batch_size: images per device per step (the global batch is batch_size x devices x
        num_nodes x gradient accumulation; the lr is scaled from the global batch).
    global_batch_size: optional: the global batch the run must have; checked against
        batch_size x devices x num_nodes x accumulate_grad_batches before training.
    num_workers: dataloader processes per device.
    train_transform, eval_transform, collate: set by ``ssl_zoo.train`` from the method's
        augmentation config.
    knn_batch_size: images per feature-extraction batch.
    seed: the order of the samples and their augmentations derive from it (set by
        ``ssl_zoo.train`` from the run's ``seed``).

    A data config also holds values that other groups interpolate and no constructor
    takes (``image_size``, ``mean``, ``std``, ... read by the augmentation as
    ``${data.image_size}``; ``root`` read by its datasets): :func:`constructor_config`
    leaves them out.
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
        global_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"data.batch_size must be an int >= 1, got {batch_size!r}")
        if global_batch_size is not None and (
            not isinstance(global_batch_size, int) or global_batch_size < 1
        ):
            raise ValueError(f"data.global_batch_size must be an int >= 1 or null, got {global_batch_size!r}")
        if not _is_int(num_workers) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an int >= 0, got {num_workers!r}")
        if (knn_train_set is None) != (knn_val_set is None):
            raise ValueError(
                "data.knn_train_set and data.knn_val_set must be set together (or both null); "
                "for folders: data.knn_train_root and data.knn_val_root"
            )
        self.train_factory = train_set
        self.knn_train_factory = knn_train_set
        self.knn_val_factory = knn_val_set
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.num_workers = num_workers
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.collate = collate
        self.knn_batch_size = knn_batch_size
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.knn_train: Dataset | None = None
        self.knn_val: Dataset | None = None
        self.seed = int(seed)
        self.resume_epoch, self.resume_samples = 0, 0

    def resume_at(self, epoch: int, samples: int) -> None:
        """Make the next train loader start at ``epoch`` after this rank's first ``samples``."""
        self.resume_epoch, self.resume_samples = int(epoch), int(samples)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            check_batch_sizes(self, self.trainer)
        if self.train_set is None:
            self.train_set = self.train_factory(transform=self.train_transform)
            if len(self.train_set) < self.batch_size:
                raise DataError(
                    f"the training set has {len(self.train_set)} images, fewer than "
                    f"data.batch_size={self.batch_size}: lower data.batch_size or add data"
                )
        if self.knn_train_factory is not None and self.knn_train is None:
            self.knn_train = self.knn_train_factory(transform=self.eval_transform)
            self.knn_val = self.knn_val_factory(transform=self.eval_transform)
            for name, dataset in (("knn_train", self.knn_train), ("knn_val", self.knn_val)):
                if isinstance(dataset, IterableDataset):
                    raise DataError(f"data.{name}_set must be map-style (an image folder), not streamed shards")
            bank, queries = getattr(self.knn_train, "classes", None), getattr(self.knn_val, "classes", None)
            if bank is not None and queries is not None and list(bank) != list(queries):
                raise DataError(
                    f"the kNN splits have different classes: memory bank {_show(bank)}, queries "
                    f"{_show(queries)}; the label of a class must be the same in both "
                    f"(same class folders in data.knn_train_root and data.knn_val_root)"
                )

    def images_per_epoch(self) -> int | None:
        """Training images per pass over the data (None for a stream of unknown length)."""
        self.setup()
        try:
            return len(self.train_set)
        except TypeError:
            return None

    def batches_per_epoch(self, world_size: int) -> float:
        """Full training batches each of ``world_size`` processes draws per pass over the
        data (``inf`` for a stream of unknown length). Map-style: every rank reads
        ceil(N / world) samples (EpochSampler) and drops its last partial batch; shards:
        every rank yields N // (world x batch) full batches (datasets/shards.py)."""
        self.setup()
        try:
            n_images = len(self.train_set)
        except TypeError:
            return math.inf
        if isinstance(self.train_set, IterableDataset):
            return n_images // (world_size * self.batch_size)
        return batches_per_epoch(n_images, world_size, self.batch_size, drop_last=True)

    @property
    def has_knn(self) -> bool:
        return self.knn_train_factory is not None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, rank: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=train and self.num_workers > 0,
            # Workers ignore the stop signals a cluster sends to the whole process group:
            # the main process saves and stops (ssl_zoo/signals.py).
            worker_init_fn=WorkerInit(rank),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else collectives.rank()
        world = trainer.world_size if trainer is not None else collectives.world_size()
        if isinstance(self.train_set, IterableDataset):
            if hasattr(self.train_set, "configure"):
                self.train_set.configure(self.batch_size, self.num_workers, rank=rank, world_size=world)
            return self._loader(self.train_set, self.batch_size, train=True, rank=rank, collate_fn=self.collate)
        sampler = EpochSampler(len(self.train_set), self.seed, rank=rank, world_size=world,
                               epoch=self.resume_epoch, start=self.resume_samples)
        self.resume_samples = 0  # a reloaded loader starts its epoch from the beginning
        return self._loader(
            SeededBatches(self.train_set, self.collate),
            self.batch_size,
            train=True,
            rank=rank,
            sampler=sampler,
            collate_fn=already_collated,
            # The workers' base seed comes from this generator, not from the global one:
            # creating an iterator then leaves the model's randomness alone.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def bad_image_report(self) -> dict:
        """{"count": distinct bad files skipped, "examples": [paths], "reasons": {path: why}}
        over the training and kNN datasets: the files dropped at setup plus those that
        failed to decode in any dataloader worker so far. Under several processes it
        gathers every rank's (call it on every rank)."""
        entries = []
        for dataset in (self.train_set, self.knn_train, self.knn_val):
            if dataset is not None and hasattr(dataset, "bad_images"):
                entries.extend(dataset.bad_images())
        entries = [entry for part in collectives.all_gather_objects(entries) for entry in part]
        return bad_image_report(entries)

    def knn_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """Memory-bank and query loaders over this process's share of each split
        (every world_size-th image), for ``ssl_zoo.callbacks.knn`` to gather.

        Every process gets the same number of batches: a sharded (FSDP2) backbone's
        forward is a collective, so a process with one batch more would wait forever. A
        shorter share is padded by repeating its last image; ``loader.dataset.num_real``
        says how many leading rows are real (the callback drops the rest)."""
        self.setup()
        shards = []
        world = collectives.world_size()
        for dataset in (self.knn_train, self.knn_val):
            indices = list(range(collectives.rank(), len(dataset), world))
            share = -(-len(dataset) // world)
            subset = torch.utils.data.Subset(dataset, indices + indices[-1:] * (share - len(indices)))
            subset.num_real = len(indices)
            # Evaluation has its own random stream: creating the loader's iterator draws its
            # workers' base seed from this generator, not from the global one training uses.
            shards.append(self._loader(subset, self.knn_batch_size, train=False, rank=collectives.rank(),
                                       generator=torch.Generator().manual_seed(self.seed)))
        return shards[0], shards[1]

    def num_classes(self) -> int:
        self.setup()
        classes = getattr(self.knn_train, "classes", None)
        if classes is None:
            raise ValueError("the kNN memory-bank dataset must expose `classes`")
        return len(classes)


def constructor_config(node: DictConfig) -> DictConfig:
    """The data config with its interpolations resolved and only the keys that
    :class:`SSLDataModule` (its ``_target_``) takes: the values kept for other groups to
    interpolate stay in the run config, not in the datamodule."""
    import inspect

    from hydra.utils import get_class

    resolved = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    accepted = set(inspect.signature(get_class(resolved._target_)).parameters)
    return OmegaConf.create({k: v for k, v in resolved.items() if k.startswith("_") or k in accepted})


def _show(classes) -> str:
    classes = list(classes)
    return f"{classes[:4]}{'...' if len(classes) > 4 else ''} ({len(classes)})"


def check_batch_sizes(datamodule: SSLDataModule, trainer: L.Trainer) -> int:
    """The global batch (per-device data.batch_size x devices x num_nodes x
    accumulate_grad_batches); a DataError if data.global_batch_size is set and differs."""
    devices = int(getattr(trainer, "num_devices", 1))
    nodes = int(getattr(trainer, "num_nodes", 1))
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1))
    actual = datamodule.batch_size * devices * nodes * accumulate
    wanted = getattr(datamodule, "global_batch_size", None)
    if wanted is not None and wanted != actual:
        shares = devices * nodes * accumulate
        if wanted % shares:
            # No per-device batch gives it: name the nearest global batches that divide.
            lower, upper = wanted - wanted % shares, wanted - wanted % shares + shares
            options = [g for g in (lower, upper) if g > 0]
            raise DataError(
                f"data.global_batch_size={wanted} is not divisible by trainer.devices x trainer.num_nodes x "
                f"trainer.accumulate_grad_batches = {devices} x {nodes} x {accumulate} = {shares}: set "
                f"data.global_batch_size={' or '.join(map(str, options))} (data.batch_size="
                f"{' or '.join(str(g // shares) for g in options)}; now {datamodule.batch_size} x {devices} x {nodes} "
                f"x {accumulate} = {actual}), or change trainer.devices / "
                f"trainer.num_nodes / trainer.accumulate_grad_batches, or set data.global_batch_size=null"
            )
        raise DataError(
            f"data.global_batch_size={wanted} but data.batch_size x devices x num_nodes x "
            f"accumulate_grad_batches = {datamodule.batch_size} x {devices} x {nodes} x "
            f"{accumulate} = {actual}: set data.batch_size={wanted // shares}, or change trainer.devices / "
            f"trainer.accumulate_grad_batches, or set data.global_batch_size=null"
        )
    return actual


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
