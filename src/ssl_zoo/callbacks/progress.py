"""Rich progress bar whose epoch label is right for step-bounded runs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, labelled "Epoch e/E" when the run is bounded by epochs
    and "Epoch e (S-step run)" when ``trainer.max_steps`` bounds it (Lightning's own label
    reads "Epoch 0/-2" there: it prints ``max_epochs - 1`` with max_epochs = -1)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            description = f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
        elif trainer.max_steps is not None and trainer.max_steps > 0:
            # the label is set once per epoch: the run's length, not a step count that goes stale
            description = f"Epoch {current_epoch} ({trainer.max_steps}-step run)"
        else:
            description = f"Epoch {current_epoch}"
        # as Lightning: pad to the validation label's width so the bar does not jump
        return f"{description:{len(self.validation_description)}}"
