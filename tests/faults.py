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
