"""Attention and PCA pictures of a fixed set of images during training (ssl_zoo.eval.visualize).

The images are the first ``num_images`` of the kNN query split (eval transform), the same
every time, so pictures of successive steps compare. Each time one PNG (a row per image:
the image, each head's CLS attention for ViTs, the PCA map) goes to
``<run dir>/viz/step_<step>.png`` and, with a WandbLogger, to W&B under ``viz``.
At 4 images it costs about a second, so the default runs it at the end only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.isolation import own_random_streams, stop_requested
from ssl_zoo.data.datamodule import knn_data
from ssl_zoo.eval.visualize import denormalize, draw_rows, pictures
from ssl_zoo.parallel.fsdp import gathered


class Visualizer(L.Callback):
    """Args:
    every_n_steps: draw every N optimizer steps; 0: at the end of training only.
    num_images: the first N images of the kNN query split.
    attention: per-head attention maps (ViTs; CNNs always get the PCA map only).
    pca_threshold: foreground = first PCA component above this (std units).
    dirname: subdirectory of the run directory.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        num_images: int = 4,
        attention: bool = True,
        pca_threshold: float = 0.0,
        dirname: str = "viz",
    ) -> None:
        check_arg("viz", "every_n_steps", every_n_steps, lambda v: v >= 0, ">= 0 (0: at the end only)")
        check_arg("viz", "num_images", num_images, lambda v: v >= 1, ">= 1")
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.attention = attention
        self.pca_threshold = pca_threshold
        self.dirname = dirname
        self.paths: list[Path] = []
        self._images: torch.Tensor | None = None
        self._last_step = -1

    def _fixed_images(self, trainer: L.Trainer) -> torch.Tensor | None:
        if self._images is None:
            datamodule = knn_data(trainer.datamodule)
            if datamodule is None:
                return None
            datamodule.setup()
            queries = datamodule.knn_val
            count = min(self.num_images, len(queries))
            self._images = torch.stack([queries[i][0] for i in range(count)])
        return self._images

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Every process runs the forward (a sharded backbone needs all of them); the
        global-zero process writes and logs the picture."""
        step = trainer.global_step
        if step == self._last_step or stop_requested(pl_module.device):  # preemption: no time for pictures
            return None
        with own_random_streams(pl_module.device):
            return self._draw(trainer, pl_module, step)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Path | None:
        images = self._fixed_images(trainer)
        if images is None:
            rank_zero_info("viz: skipped, the data has no labeled kNN query split to take images from")
            self._last_step = step
            return None
        self._last_step = step
        backbone = pl_module.eval_backbone
        attention = self.attention and backbone.has_patch_tokens
        resharding = getattr(trainer.strategy, "reshard_after_forward", True)
        with torch.no_grad(), trainer.precision_plugin.forward_context(), gathered(backbone, resharding):
            result = pictures(backbone, images.to(pl_module.device), attention, self.pca_threshold)
        if not trainer.is_global_zero:
            return None
        datamodule = trainer.datamodule
        path = Path(trainer.default_root_dir) / self.dirname / f"step_{step:06d}.png"
        colours = datamodule.eval_transform  # the normalisation the images went through
        draw_rows(path, denormalize(images, colours.mean, colours.std), result["attention"], result["pca"])
        self.paths.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="viz", images=[str(path)], step=step)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer, pl_module)
