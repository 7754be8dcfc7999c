"""Faults injected into real runs through their config (``+callbacks.<name>=...``): the
product code path is the real one, only the world around it changes."""

from __future__ import annotations

import shutil

import lightning as L


class RemoveAfterStep(L.Callback):
    """Deletes ``path`` (e.g. data.root) after optimizer step ``step``: data that goes
    away during a run (a deleted folder, an unmounted share)."""

    def __init__(self, path: str, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            shutil.rmtree(self.path)


class PoisonAfterStep(L.Callback):
    """Writes NaN into one parameter after optimizer step ``step``, on process ``rank``
    only (under FSDP2, into its local shard): weights that went non-finite on one process."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            import torch

            local = (p.to_local() if hasattr(p, "to_local") else p for p in pl_module.parameters() if p.requires_grad)
            with torch.no_grad():
                next(t for t in local if t.numel() > 0).fill_(float("nan"))  # a shard can be empty
