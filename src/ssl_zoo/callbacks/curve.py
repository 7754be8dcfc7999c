"""The learning curve: kNN top-1 and training loss against the optimizer step, as a PNG.

Written to ``<run dir>/learning_curve.png`` at the end of training (and logged to W&B
when that logger is on), with the raw-pixel kNN as a dashed line so one look shows
whether the network learned more than the pixels hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ssl_zoo.callbacks.knn import KNNEvaluator


class LearningCurve(L.Callback):
    """Args:
    filename: written in the trainer's ``default_root_dir`` (the run directory).
    """

    def __init__(self, filename: str = "learning_curve.png") -> None:
        self.filename = filename
        self.losses: list[torch.Tensor] = []  # detached, read once at the end (no per-step sync)
        self.steps: list[int] = []
        self.path: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {"learning_curve": str(self.path.resolve()) if self.path else None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(loss.detach())
            self.steps.append(trainer.global_step)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        knn = next((cb for cb in trainer.callbacks if isinstance(cb, KNNEvaluator)), None)
        if not self.losses and not (knn and knn.history):
            return
        losses = torch.stack(self.losses).float().cpu().tolist() if self.losses else []
        self.path = Path(trainer.default_root_dir) / self.filename
        draw_learning_curve(
            self.path,
            title=f"{type(pl_module).__name__}: kNN top-1 and loss",
            knn_history=knn.history if knn else [],
            raw_pixel_top1=knn.raw_pixel_top1 if knn else None,
            knn_label=f"kNN top-1 (k={knn.k}, T={knn.temperature})" if knn else "",
            loss_steps=self.steps,
            losses=losses,
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="learning_curve", images=[str(self.path)], step=trainer.global_step)


def draw_learning_curve(
    path: Path,
    title: str,
    knn_history: list[tuple[int, float]],
    raw_pixel_top1: float | None,
    knn_label: str,
    loss_steps: list[int],
    losses: list[float],
) -> Path:
    """Two panels side by side: kNN top-1 (%) and training loss against the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (ax_knn, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    if knn_history:
        steps, top1 = zip(*knn_history, strict=True)
        ax_knn.plot(steps, [100 * v for v in top1], marker="o", label="network")
        for step, value in (knn_history[0], knn_history[-1]):
            ax_knn.annotate(f"{100 * value:.1f}%", (step, 100 * value), textcoords="offset points",
                            xytext=(0, 7), ha="center", fontsize=8)
    if raw_pixel_top1 is not None:
        ax_knn.axhline(100 * raw_pixel_top1, color="grey", linestyle="--",
                       label=f"raw pixels ({100 * raw_pixel_top1:.1f}%)")
    ax_knn.margins(y=0.15)  # room for the labels
    ax_knn.set(xlabel="optimizer step", ylabel="top-1 (%)", title=knn_label)
    ax_knn.grid(alpha=0.3)
    if knn_history or raw_pixel_top1 is not None:
        ax_knn.legend(loc="lower right", fontsize=8)
    else:  # the kNN callback is off (or has no labeled data): say so instead of an empty legend
        ax_knn.text(0.5, 0.5, "no kNN evaluation in this run", ha="center", va="center", transform=ax_knn.transAxes)
    if losses:
        ax_loss.plot(loss_steps, losses, linewidth=0.8, alpha=0.5, label="per step")
        window = max(1, len(losses) // 25)
        if window > 1:
            smooth = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist()
            ax_loss.plot(loss_steps[window - 1 :], smooth, linewidth=1.8, label=f"mean of {window}")
        ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set(xlabel="optimizer step", ylabel="train/loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
