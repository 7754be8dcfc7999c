"""Sample order and augmentation randomness as pure functions of (seed, epoch, position).

What makes a mid-epoch resume exact (docs/reliability.md, "Exact resume"):

- :class:`EpochSampler` orders the epoch by a permutation drawn from (seed, epoch) alone,
  gives each rank every world_size-th entry of it, and can start at an offset (the
  samples this rank already consumed, saved in the checkpoint). Lightning itself restarts
  a map-style loader at the start of the epoch.
- Each sample comes with its own seed, drawn from (seed, epoch) too, and
  :class:`SeededBatches` seeds torch's global generator with it right before the
  transform runs; the collate (iBOT masks) gets a seed derived from the batch's first
  sample. Which worker builds a batch, how many workers there are, and whether the run
  was resumed no longer change a single random number of the data.

The transforms keep drawing from torch's global generator (``torch.rand``): reseeding it
costs a few microseconds per sample, and no transform had to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

_SEED_BOUND = 2**62  # per-sample seeds: any int64 torch.manual_seed accepts
_COLLATE_SALT = 0x5DEECE66D  # the collate's seed differs from the first sample's own


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Two 32-bit halves so that (seed, epoch) pairs never collide (seed + epoch would).
    return torch.Generator().manual_seed((int(seed) & 0xFFFFFFFF) << 32 | (int(epoch) & 0xFFFFFFFF))


def batches_per_epoch(dataset_size: int, world_size: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches each process draws per pass over ``dataset_size`` samples.

    Mirrors DistributedSampler and :class:`EpochSampler` (every rank gets ceil(N / world) samples, padded by
    repetition) followed by a DataLoader with ``drop_last`` (ssl_zoo's training loader
    drops the last partial batch, as DINO and DINOv2 do)."""
    if dataset_size < 1 or world_size < 1 or batch_size < 1:
        raise ValueError(
            f"dataset_size, world_size and batch_size must be >= 1, got {dataset_size}, "
            f"{world_size}, {batch_size}"
        )
    per_rank = math.ceil(dataset_size / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, sample seed) for this rank, ceil(len(dataset) / world_size)
    per epoch: like torch's DistributedSampler, the permutation is padded with its own
    beginning until every rank has as many (the padded repeats get seeds of their own).

    Args:
        num_samples: the dataset's length.
        seed: the run seed.
        rank, world_size: this process's shard of the epoch permutation.
        epoch: the epoch the first iteration reads (Lightning calls ``set_epoch`` for the next).
        start: samples of this rank to skip in that first iteration (a resumed epoch).
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 start: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.per_rank = -(-self.num_samples // self.world_size)
        self.epoch = int(epoch)
        self.start = int(start)

    def __len__(self) -> int:
        # The whole epoch, even when resuming: Lightning counts the resumed batches itself.
        return self.per_rank

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = int(epoch), 0

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, seeds) of this rank for ``epoch``, from the first sample on."""
        generator = epoch_generator(self.seed, epoch)
        total = self.per_rank * self.world_size
        order = torch.randperm(self.num_samples, generator=generator).repeat(-(-total // self.num_samples))
        seeds = torch.randint(_SEED_BOUND, (total,), generator=generator, dtype=torch.int64)
        positions = torch.arange(self.rank, total, self.world_size)
        return order[positions], seeds[positions]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self.epoch_order(self.epoch)
        start, self.start = self.start, 0  # the offset applies once: the next epoch starts at 0
        yield from zip(indices[start:].tolist(), seeds[start:].tolist(), strict=True)


class SeededBatches(Dataset):
    """A map-style dataset read by keys (index, seed), whose ``__getitems__`` (what the
    DataLoader calls for a batch) returns the collated batch: each sample is transformed
    right after seeding torch's generator with its own seed, the collate after a seed of
    the batch. Use with :func:`already_collated` as the DataLoader's collate_fn.

    The caller's generator state is restored afterwards, so that with num_workers=0 the
    main process's randomness (dropout, drop path) does not depend on the data.
    """

    def __init__(self, dataset: Dataset, collate: Callable[[list], Any] | None) -> None:
        self.dataset = dataset
        self.collate = collate if collate is not None else torch.utils.data.default_collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> Any:
        generator = torch.default_generator
        saved = generator.get_state()
        try:
            samples = []
            for index, seed in keys:
                generator.manual_seed(seed)
                samples.append(self.dataset[index])
            generator.manual_seed(keys[0][1] ^ _COLLATE_SALT)
            return self.collate(samples)
        finally:
            generator.set_state(saved)


def already_collated(batch: Any) -> Any:
    """collate_fn for :class:`SeededBatches`, whose batches arrive collated."""
    return batch
