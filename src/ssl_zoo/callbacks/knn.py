"""Online weighted-kNN evaluation of the backbone (DINO's protocol, k=20, T=0.07).

Runs at step 0 (the random initialisation, the baseline every curve starts from), every
``every_n_steps`` optimizer steps, and at the end of training. Each process extracts the
features of its share of the memory bank and queries; they are gathered so every process
scores the full split.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from ssl_zoo import distributed
from ssl_zoo.eval.knn import knn_class_scores


class KNNEvaluator(L.Callback):
    def __init__(self, k: int = 20, temperature: float = 0.07, every_n_steps: int = 0) -> None:
        if k < 1:
            raise ValueError(f"callbacks.knn.k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"callbacks.knn.temperature must be > 0, got {temperature}")
        if every_n_steps < 0:
            raise ValueError(f"callbacks.knn.every_n_steps must be >= 0 (0: start and end only), got {every_n_steps}")
        self.k = k
        self.temperature = temperature
        self.every_n_steps = every_n_steps
        self.history: list[tuple[int, float]] = []

    @property
    def start_top1(self) -> float | None:
        return self.history[0][1] if self.history else None

    @property
    def last_top1(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def _enabled(self, trainer: L.Trainer) -> bool:
        return bool(getattr(trainer.datamodule, "has_knn", False))

    @torch.no_grad()
    def _features(self, pl_module: L.LightningModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = pl_module.eval_backbone
        was_training = pl_module.training
        pl_module.eval()  # every module, the teacher's BatchNorm included: running statistics
        feats, labels = [], []
        device = pl_module.device
        # Same numerics as training (e.g. bf16 autocast) via the trainer's precision plugin.
        with pl_module.trainer.precision_plugin.forward_context():
            for images, targets in loader:
                feats.append(backbone(images.to(device))["cls"].float())
                labels.append(torch.as_tensor(targets).to(device))
        pl_module.train(was_training)
        return distributed.all_gather_cat(torch.cat(feats)), distributed.all_gather_cat(torch.cat(labels))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        start = time.perf_counter()
        datamodule = trainer.datamodule
        bank_loader, query_loader = datamodule.knn_dataloaders()
        bank, bank_labels = self._features(pl_module, bank_loader)
        queries, query_labels = self._features(pl_module, query_loader)
        num_classes = datamodule.num_classes()
        scores = knn_class_scores(bank, bank_labels, queries, num_classes, self.k, self.temperature)
        metrics = {"knn/top1": MulticlassAccuracy(num_classes, top_k=1, average="micro").to(scores.device)}
        if num_classes > 5:
            metrics["knn/top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro").to(scores.device)
        values = {name: float(metric(scores, query_labels)) for name, metric in metrics.items()}
        step = trainer.global_step
        self.history.append((step, values["knn/top1"]))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        rank_zero_info(
            f"kNN (k={self.k}, T={self.temperature}) at step {step}: top-1 {100 * values['knn/top1']:.2f}% "
            f"({len(queries)} queries, {len(bank)} in the bank, {time.perf_counter() - start:.1f}s)"
        )
        return values["knn/top1"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled(trainer) and not self.history and trainer.global_step == 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        # Under gradient accumulation several batches end at the same optimizer step.
        if due and self._enabled(trainer) and self.history[-1][0] != step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled(trainer) and (not self.history or self.history[-1][0] != trainer.global_step):
            self.evaluate(trainer, pl_module)
