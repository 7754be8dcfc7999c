"""Online weighted-kNN evaluation of the backbone (DINO's protocol; k and T configurable).

Runs at step 0 (the random initialisation, the baseline every curve starts from), every
``every_n_steps`` optimizer steps, and at the end of training. Each process extracts the
features of its share of the memory bank and queries; they are gathered so every process
scores the full split.

The step-0 baseline is fair: BatchNorm running statistics still at their initial values
(mean 0, variance 1) would make a random network look worse than it is, and the first few
training steps would then "gain" points by merely replacing them. Before the step-0
evaluation the evaluated backbone's running statistics are therefore recalibrated on
``recalibrate_batches`` batches of the memory bank (the training images, eval transform),
for that evaluation only: training's statistics are put back after it.

Evaluations leave the run as it would be without them (their own random streams) and stop
early when a preemption signal arrives (``callbacks/isolation.py``).

Next to the curve, the same protocol on raw pixels (the eval-transformed images,
flattened) tells whether the network learned more than the pixels already hold.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.isolation import (
    batchnorm_statistics_kept,
    own_random_streams,
    stop_requested,
)
from ssl_zoo.callbacks.resume import was_preempted
from ssl_zoo.data.datamodule import knn_data
from ssl_zoo.eval.knn import knn_class_scores
from ssl_zoo.parallel import collectives


class KNNEvaluator(L.Callback):
    """Args:
    k, temperature: the weighted-kNN protocol (DINO: k=20, T=0.07; CIFAR benchmarks
        often k=200, T=0.1).
    every_n_steps: also evaluate every N optimizer steps (0: start and end only).
    recalibrate_batches: bank batches that set the BatchNorm statistics before step 0.
    raw_pixel_baseline: also score raw pixels once (skipped, with a message, when the
        bank's pixels would need more than ``raw_pixel_max_gb`` of memory).
    """

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        every_n_steps: int = 0,
        recalibrate_batches: int = 4,
        raw_pixel_baseline: bool = True,
        raw_pixel_max_gb: float = 2.0,
    ) -> None:
        check_arg("knn", "k", k, lambda v: v >= 1, ">= 1")
        check_arg("knn", "temperature", temperature, lambda v: v > 0, "> 0")
        check_arg("knn", "every_n_steps", every_n_steps, lambda v: v >= 0, ">= 0 (0: start and end only)")
        check_arg("knn", "recalibrate_batches", recalibrate_batches, lambda v: v >= 0, ">= 0")
        self.k = k
        self.recalibrate_batches = recalibrate_batches
        self.raw_pixel_baseline = raw_pixel_baseline
        self.raw_pixel_max_gb = raw_pixel_max_gb
        self.raw_pixel_top1: float | None = None
        self.temperature = temperature
        self.every_n_steps = every_n_steps
        self.history: list[tuple[int, float]] = []

    @property
    def start_top1(self) -> float | None:
        return self.history[0][1] if self.history else None

    @property
    def last_top1(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def summary(self) -> dict[str, Any]:
        return {
            "knn_top1_start": self.start_top1,
            "knn_top1_end": self.last_top1,
            "knn_top1_raw_pixels": self.raw_pixel_top1,
            "knn_k": self.k,
            "knn_temperature": self.temperature,
            "knn_history": [{"step": step, "top1": top1} for step, top1 in self.history],
        }

    def _enabled(self, trainer: L.Trainer) -> bool:
        return knn_data(trainer.datamodule) is not None

    @torch.no_grad()
    def _features(self, pl_module: L.LightningModule, loader, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, labels) of every process's share, gathered; None when a preemption
        signal stopped the pass."""
        backbone = (lambda images: {"cls": images.flatten(1)}) if raw else pl_module.eval_backbone
        was_training = pl_module.training
        pl_module.eval()  # every module, the teacher's BatchNorm included: running statistics
        feats, labels = [], []
        device = pl_module.device
        # Same numerics as training (e.g. bf16 autocast) via the trainer's precision plugin.
        try:
            with pl_module.trainer.precision_plugin.forward_context():
                for images, targets in loader:
                    if stop_requested(device):
                        return None
                    feats.append(backbone(images.to(device))["cls"].float())
                    labels.append(torch.as_tensor(targets).to(device))
        finally:
            pl_module.train(was_training)
        real = getattr(loader.dataset, "num_real", None)  # rows past it pad this process's share
        feats, labels = torch.cat(feats)[:real], torch.cat(labels)[:real]
        return collectives.all_gather_cat(feats), collectives.all_gather_cat(labels)

    def _score(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str, raw: bool = False):
        datamodule = trainer.datamodule
        bank_loader, query_loader = datamodule.knn_dataloaders()
        bank = self._features(pl_module, bank_loader, raw)
        queries = bank and self._features(pl_module, query_loader, raw)
        if queries is None:
            return None
        (bank, bank_labels), (queries, query_labels) = bank, queries
        num_classes = datamodule.num_classes()
        scores = knn_class_scores(bank, bank_labels, queries, num_classes, self.k, self.temperature)
        metrics = {f"{prefix}/top1": MulticlassAccuracy(num_classes, top_k=1, average="micro").to(scores.device)}
        if num_classes > 5:
            metrics[f"{prefix}/top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro").to(scores.device)
        values = {name: float(metric(scores, query_labels)) for name, metric in metrics.items()}
        return values, len(queries), len(bank)

    def evaluate_raw_pixels(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """The same kNN on flattened eval-transformed pixels (once per run)."""
        start = time.perf_counter()
        datamodule = trainer.datamodule
        bank_size = len(datamodule.knn_train)
        image = datamodule.knn_train[0][0]
        gigabytes = bank_size * image.numel() * 4 / 1e9
        if gigabytes > self.raw_pixel_max_gb:
            rank_zero_info(
                f"kNN on raw pixels skipped: the bank's pixels need {gigabytes:.1f} GB "
                f"(> callbacks.knn.raw_pixel_max_gb={self.raw_pixel_max_gb})"
            )
            return None
        scored = self._score(trainer, pl_module, "knn_raw_pixels", raw=True)
        if scored is None:
            return self._stopped("on raw pixels", trainer)
        values, n_queries, n_bank = scored
        self.raw_pixel_top1 = values["knn_raw_pixels/top1"]
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        rank_zero_info(
            f"kNN (k={self.k}, T={self.temperature}) on raw pixels: top-1 "
            f"{100 * self.raw_pixel_top1:.2f}% ({n_queries} queries, {n_bank} in the bank, "
            f"{time.perf_counter() - start:.1f}s)"
        )
        return self.raw_pixel_top1

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """Top-1 now (None: a preemption signal stopped the evaluation)."""
        start = time.perf_counter()
        scored = self._score(trainer, pl_module, "knn")
        if scored is None:
            return self._stopped(f"at step {trainer.global_step}", trainer)
        values, n_queries, n_bank = scored
        step = trainer.global_step
        self.history.append((step, values["knn/top1"]))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        rank_zero_info(
            f"kNN (k={self.k}, T={self.temperature}) at step {step}: top-1 {100 * values['knn/top1']:.2f}% "
            f"({n_queries} queries, {n_bank} in the bank, {time.perf_counter() - start:.1f}s)"
        )
        return values["knn/top1"]

    @staticmethod
    def _stopped(what: str, trainer: L.Trainer) -> None:
        rank_zero_info(f"kNN evaluation {what} stopped: a preemption signal arrived (the run saves and stops)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled(trainer) and not self.history and trainer.global_step == 0:
            # Its own random streams, and training's BatchNorm statistics back afterwards:
            # the run is the same with the evaluation on or off (callbacks/isolation.py).
            with own_random_streams(pl_module.device), batchnorm_statistics_kept(pl_module.eval_backbone):
                if self.raw_pixel_baseline and not stop_requested(pl_module.device):
                    self.evaluate_raw_pixels(trainer, pl_module)
                if self.recalibrate_batches and not stop_requested(pl_module.device):
                    bank_loader, _ = trainer.datamodule.knn_dataloaders()
                    recalibrate_batchnorm(pl_module.eval_backbone, bank_loader, self.recalibrate_batches,
                                          pl_module.device)
                if stop_requested(pl_module.device):
                    self._stopped("at step 0", trainer)
                else:
                    self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        # Under gradient accumulation several batches end at the same optimizer step.
        if due and self._enabled(trainer) and (not self.history or self.history[-1][0] != step):  # resumed: empty
            with own_random_streams(pl_module.device):
                self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if was_preempted(trainer):
            return  # the job is about to be killed: no time for an evaluation
        if self._enabled(trainer) and (not self.history or self.history[-1][0] != trainer.global_step):
            with own_random_streams(pl_module.device):
                self.evaluate(trainer, pl_module)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader, num_batches: int, device: torch.device) -> int:
    """Replace the running statistics of every BatchNorm in ``model`` by the exact mean
    and variance over the first ``num_batches`` batches of ``loader`` (cumulative
    average); weights and every other module's state are untouched. Returns the number
    of images seen (0 when the model has no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every batch
        m.train()
    seen = 0
    for index, (images, _) in enumerate(loader):
        if index == num_batches or stop_requested(device):
            break
        model(images.to(device))
        seen += images.shape[0]
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    return seen
