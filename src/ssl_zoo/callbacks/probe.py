"""Online linear probe: a linear classifier trained, while pretraining runs, on the
detached features of the training batches; ``probe/top1`` is its accuracy on the kNN
query split.

What it measures: how linearly separable the classes are, right now, in the features of
the backbone kNN reads (``eval_backbone``: the teacher for DINO / DINOv2). It is not the
offline linear protocol (frozen backbone, many epochs over un-augmented images): the
probe has only seen augmented crops once each and chases moving features, so it lags
and reads lower; compare runs with it, not with papers. ``probe/train_top1`` is its
running accuracy on the training crops since the previous evaluation.

It leaves pretraining exactly as it would be without it:

- it reads ``step_signals["eval_features"]`` (detached, computed by the step anyway) and
  the batch labels, after the optimizer step; its parameters and optimizer are its own;
- it draws no random numbers from the global generators: zero initialisation, no
  dropout, and evaluation with its own random streams (``callbacks/isolation.py``), so the
  data and augmentation stream of the run is unchanged (tests/test_probe.py checks both).
  Its evaluation stops early when a preemption signal arrives.

Cost: one (2B, D) x (D, C) linear layer forward/backward per step, and one forward of the
eval backbone over the query split per evaluation (a fifth of a kNN evaluation with the
default data: 2,000 queries and no 8,000-image bank).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.isolation import own_random_streams, stop_requested
from ssl_zoo.data.datamodule import knn_data
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.parallel import collectives


class OnlineLinearProbe(L.Callback):
    """Args:
    every_n_steps: evaluate on the kNN query split every N optimizer steps (0: at the
        end only); always at the end of training.
    lr: AdamW learning rate of the probe (1e-3; the features are standardised by a
        BatchNorm without affine parameters first, as MAE's linear probe does).
    weight_decay: of the probe's AdamW.
    """

    def __init__(self, every_n_steps: int = 50, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        check_arg("probe", "every_n_steps", every_n_steps, lambda v: isinstance(v, int) and v >= 0,
                  "an int >= 0 (0: at the end only)")
        check_arg("probe", "lr", lr, lambda v: v > 0, "> 0")
        check_arg("probe", "weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
        self.every_n_steps = every_n_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.head: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[tuple[int, float]] = []
        self._correct = self._seen = None  # device tensors: no host sync between evaluations
        self._resume_state: dict | None = None

    @property
    def last_top1(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def summary(self) -> dict[str, Any]:
        return {"probe_top1_end": self.last_top1}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = knn_data(trainer.datamodule)
        if datamodule is None:
            rank_zero_info("online probe off: it needs the labeled kNN splits (data.knn_train_set / knn_val_set)")
            return
        if self.head is None:
            dim, classes = pl_module.eval_backbone.embed_dim, datamodule.num_classes()
            # nn.Linear's own init would draw from the global generator: skip it and start
            # from zeros (a convex problem, no symmetry to break).
            linear = nn.utils.skip_init(nn.Linear, dim, classes)
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
            self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear)
        self.head.to(pl_module.device)
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self._resume_state:  # Lightning restores callback states before on_train_start
            self.head.load_state_dict(self._resume_state["head"])
            self.optimizer.load_state_dict(self._resume_state["optimizer"])
            self.history = [tuple(entry) for entry in self._resume_state["history"]]
            self._resume_state = None
        self._reset_running_accuracy(pl_module.device)

    def _reset_running_accuracy(self, device: torch.device) -> None:
        self._correct = torch.zeros((), device=device)
        self._seen = torch.zeros((), device=device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.head is None:
            return
        features = pl_module.step_signals.get("eval_features") if isinstance(pl_module, SSLMethod) else None
        if features is None:
            return
        labels = batch["labels"].repeat(features.shape[0] // batch["labels"].shape[0])  # view-major rows
        # Unlabeled images (label -1) are masked out rather than tested for with an `if`,
        # which would sync with the device on every step.
        labeled = labels >= 0
        with torch.enable_grad(), torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.head(features.float())
            losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
            loss = (losses * labeled).sum() / labeled.sum().clamp_min(1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in self.head.parameters():  # every process keeps the same probe
            param.grad = collectives.all_reduce_mean(param.grad)
        self.optimizer.step()
        self._correct += ((logits.detach().argmax(dim=1) == labels) & labeled).sum()
        self._seen += labeled.sum()
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and (not self.history or self.history[-1][0] != step):
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.head is not None and (not self.history or self.history[-1][0] != trainer.global_step):
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        start = time.perf_counter()
        device = pl_module.device
        was_training = pl_module.training
        pl_module.eval()
        self.head.eval()
        correct = torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        stopped = False
        with own_random_streams(device), trainer.precision_plugin.forward_context():
            _, query_loader = trainer.datamodule.knn_dataloaders()
            left = getattr(query_loader.dataset, "num_real", len(query_loader.dataset))  # then padding
            for images, targets in query_loader:
                if stop_requested(device):  # preemption: the run saves and stops
                    stopped = True
                    break
                features = pl_module.eval_backbone(images.to(device))["cls"].float()
                predictions = self.head(features).argmax(dim=1)[:left]
                correct += (predictions == torch.as_tensor(targets).to(device)[:left]).sum()
                total += predictions.numel()
                left -= predictions.numel()
        pl_module.train(was_training)
        self.head.train()
        if stopped:
            rank_zero_info(f"online linear probe at step {trainer.global_step} stopped: a preemption signal arrived")
            return None
        counts = collectives.all_reduce_sum(torch.stack((correct, total, self._correct, self._seen)))
        top1, train_top1 = (counts[0] / counts[1].clamp_min(1)).item(), (counts[2] / counts[3].clamp_min(1)).item()
        step = trainer.global_step
        self.history.append((step, top1))
        for logger in trainer.loggers:
            logger.log_metrics({"probe/top1": top1, "probe/train_top1": train_top1}, step=step)
        self._reset_running_accuracy(device)
        rank_zero_info(
            f"online linear probe at step {step}: top-1 {100 * top1:.2f}% on {int(counts[1])} queries "
            f"(training crops: {100 * train_top1:.2f}%, {time.perf_counter() - start:.1f}s)"
        )
        return top1

    def state_dict(self) -> dict:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(), "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_state = state_dict or None  # applied once the head exists (on_train_start)
