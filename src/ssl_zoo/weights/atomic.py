"""Checkpoint files that are either complete or absent, and never hold NaNs.

Lightning's default writer streams into the final path (through an fsspec transaction that
renames, but does not fsync), so a kill or a power cut at the wrong moment can leave a
file that is neither the old checkpoint nor the new one. Here every save goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over the
target (an atomic replace on POSIX file systems), and the directory entry is fsynced too.

A model with a non-finite weight is never written: the save raises instead, so the last
good checkpoint stays the newest one on disk.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssl_zoo.errors import UserError

# The key under which a checkpoint carries its run's composed config: written by the
# method when Lightning saves, read back by weights/load.py (resume checks, export, eval).
CONFIG_KEY = "ssl_zoo_config"


class CheckpointSaveError(UserError):
    """A checkpoint that was not written; the previous one is untouched."""


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` with a NaN or an Inf."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def non_finite_refusal(path: str | Path, count: int, example: str) -> CheckpointSaveError:
    """The error of every save path (file or FSDP2 shards) that meets NaN/Inf weights."""
    return CheckpointSaveError(
        f"checkpoint {path} not written: {count} model tensors hold NaN/Inf (e.g. {example}); "
        "the last finite checkpoint is kept. Likely causes: too high optim.schedule.base_lr, "
        "trainer.precision (try 32-true), or a teacher temperature too low"
    )


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        if err.errno == errno.ENOSPC:
            raise CheckpointSaveError(
                f"checkpoint {path}: the disk is full, nothing was written (the previous checkpoint "
                f"is intact); free space in {path.parent} or point callbacks.checkpoint.dirpath elsewhere"
            ) from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic, fsynced writes; refuses non-finite models. The
    strategies that save without it (FSDP2's sharded writes) ask it for the same check
    (``non_finite_tensors`` / ``non_finite_refusal``), so every save path refuses alike."""

    non_finite_tensors = staticmethod(non_finite_tensors)
    non_finite_refusal = staticmethod(non_finite_refusal)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise non_finite_refusal(path, len(bad), bad[0])
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """A file as Lightning loads it, or an FSDP2 checkpoint directory consolidated in this
        process (so a sharded run resumes on one process or under DDP)."""
        from ssl_zoo.weights.load import is_sharded_checkpoint, load_checkpoint

        if is_sharded_checkpoint(path):
            return load_checkpoint(path, optimizer=True)
        if map_location is None:
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
