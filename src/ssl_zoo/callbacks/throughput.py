"""Training throughput in images per second (data loading included).

The rate of a step is images / time between consecutive batch ends. The run figure is
the median over steps, so the rare pauses between them (kNN evaluation, checkpoints,
epoch boundaries, worker start-up) don't distort it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L

from ssl_zoo.parallel import collectives


class Throughput(L.Callback):
    """Counts images (not crops) over all processes; logs ``perf/images_per_sec``
    (median of the last ``log_every_n_steps`` steps)."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = max(log_every_n_steps, 1)
        self.rates: list[float] = []
        self._last_end: float | None = None

    @property
    def images_per_sec(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def summary(self) -> dict[str, Any]:
        return {"images_per_sec": self.images_per_sec}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None and now > self._last_end:
            self.rates.append(len(batch["labels"]) * collectives.world_size() / (now - self._last_end))
            if len(self.rates) % self.log_every_n_steps == 0:
                recent = statistics.median(self.rates[-self.log_every_n_steps :])
                pl_module.log("perf/images_per_sec", recent, on_step=True, on_epoch=False)
        self._last_end = now
