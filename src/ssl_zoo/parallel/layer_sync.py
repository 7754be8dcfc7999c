"""Lightning layer-sync plugin for ssl_zoo's SyncBatchNorm (parallel/sync_batchnorm.py).

Apart from the module so that models/ stays plain torch (no Lightning import), like
``checkpoint_io.py`` holds the checkpoint plugin.
"""

from __future__ import annotations

import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ssl_zoo.parallel import collectives
from ssl_zoo.parallel.sync_batchnorm import (
    SyncBatchNorm,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)


class SyncBatchNormLayerSync(LayerSync):
    """Lightning plugin: ``Trainer(plugins=[SyncBatchNormLayerSync()])`` converts the
    model's BatchNorm layers to :class:`SyncBatchNorm` when fitting under a multi-process
    strategy (DDP) and reverts them at teardown. Not with ``sync_batchnorm=True`` (that is
    torch's SyncBatchNorm; Lightning allows one layer-sync plugin)."""

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group

    def apply(self, model: nn.Module) -> nn.Module:
        model = convert_sync_batchnorm(model, self.process_group)
        count = sum(isinstance(m, SyncBatchNorm) for m in model.modules())
        rank_zero_info(
            f"sync_batchnorm: {count} BatchNorm layers normalise with the statistics of all "
            f"{collectives.world_size()} processes (ssl_zoo SyncBatchNorm, any device)"
        )
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)
