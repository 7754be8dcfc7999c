"""One process of a distributed-equivalence run (tests/test_distributed_equivalence.py).

    python tests/equivalence_worker.py --strategy single --cases cases.json --out a.pt
    torchrun --nproc-per-node 2 tests/equivalence_worker.py --strategy ddp|fsdp --cases cases.json --out b.pt

cases.json: {name: {"overrides": [...], "sync_batchnorm": bool}}, run one after the other.
Each method comes from the real config composition (``compose_config`` + its overrides). Every run sees the same global batches: 2 global + 2 local crops of
``GLOBAL_BATCH`` images per step, drawn from a fixed seed, with iBOT masks from the real
collate's mask generator for the whole global batch; process r of N takes images
[r * B/N, (r + 1) * B/N) of every view (and their masks). Lightning fits 3 optimizer steps.
Rank 0 writes {name: {"losses": [mean over processes of each step's loss], "koleo": [the
same for DINOv2's KoLeo term], "state": the whole (gathered) state dict}} to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_zoo.config import compose_config  # noqa: E402
from ssl_zoo.data.masking import sample_masks  # noqa: E402
from ssl_zoo.optim.run_plan import RunPlan  # noqa: E402
from ssl_zoo.parallel import collectives  # noqa: E402
from ssl_zoo.parallel.fsdp import FSDP2Strategy  # noqa: E402
from ssl_zoo.parallel.layer_sync import SyncBatchNormLayerSync  # noqa: E402
from ssl_zoo.train import _build_collate, build_backbone, build_method  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3


def global_batches(cfg, backbone, method) -> list[dict]:
    """STEPS batches of GLOBAL_BATCH images, the same in every process."""
    generator = torch.Generator().manual_seed(1234)
    size, local = cfg.augmentation.transform.global_size, cfg.augmentation.transform.local_size
    collate = _build_collate(cfg, backbone, method)
    batches = []
    for _ in range(STEPS):
        n_local = cfg.augmentation.transform.n_local
        batch = {
            "global_crops": torch.randn(2 * GLOBAL_BATCH, 3, size, size, generator=generator),
            "local_crops": torch.randn(n_local * GLOBAL_BATCH, 3, local, local, generator=generator) if n_local else None,
            "labels": torch.randint(0, 10, (GLOBAL_BATCH,), generator=generator),
        }
        if collate.mask_generator is not None:  # the collate's generator and ratios, global batch
            masks = sample_masks(2 * GLOBAL_BATCH, collate.mask_generator.grid_size, collate.mask_ratio_min_max,
                                 collate.mask_probability, generator=collate.mask_generator, rng=generator)
            batch["masks"] = masks
            batch["mask_weights"] = 1.0 / masks.sum(dim=1).clamp(min=1).to(torch.float32)
        batches.append(batch)
    return batches


def rank_slice(batch: dict, rank: int, world: int) -> dict:
    """Images [rank * b, (rank + 1) * b) of every view, b = GLOBAL_BATCH / world."""
    per = GLOBAL_BATCH // world
    keep = lambda t, views: torch.cat([t[v * GLOBAL_BATCH + rank * per: v * GLOBAL_BATCH + (rank + 1) * per]  # noqa: E731
                                       for v in range(views)])
    local = batch["local_crops"]
    out = {"global_crops": keep(batch["global_crops"], 2),
           "local_crops": None if local is None else keep(local, local.shape[0] // GLOBAL_BATCH),
           "labels": batch["labels"][rank * per:(rank + 1) * per]}
    if "masks" in batch:
        out["masks"], out["mask_weights"] = keep(batch["masks"], 2), keep(batch["mask_weights"], 2)
    return out


class FixedBatches(L.LightningDataModule):
    def __init__(self, batches: list[dict], batch_size: int) -> None:
        super().__init__()
        self.batches, self.batch_size = batches, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, shuffle=False)


class Record(L.Callback):
    """Each step's loss (and KoLeo term), averaged over processes: what DDP's averaged
    gradient is the gradient of."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.koleo: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = torch.stack([outputs["loss"].detach().float(),
                              torch.as_tensor(trainer.callback_metrics.get("train/koleo_loss", 0.0)).float()])
        values = collectives.all_reduce_mean(values)
        self.losses.append(float(values[0]))
        self.koleo.append(float(values[1]))


def full_state(trainer: L.Trainer, method: torch.nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(trainer.strategy, FSDP2Strategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(method, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def run_case(strategy_name: str, overrides: list[str], sync_batchnorm: bool) -> dict | None:
    """One method's 3 steps under one strategy; the result on global rank 0, else None."""
    cfg = compose_config(overrides, Path(tempfile.mkdtemp()))
    L.seed_everything(cfg.seed, workers=True)
    backbone = build_backbone(cfg)
    method = build_method(cfg, backbone)
    batches = global_batches(cfg, backbone, method)
    method.plan_run(RunPlan(total_steps=STEPS, steps_per_data_epoch=len(batches), global_batch_size=GLOBAL_BATCH))

    world = 1 if strategy_name == "single" else 2
    strategy = {"single": "auto", "ddp": "ddp", "fsdp": FSDP2Strategy()}[strategy_name]
    record = Record()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=strategy, max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[record], use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0,
        plugins=[SyncBatchNormLayerSync()] if sync_batchnorm and world > 1 else None, log_every_n_steps=1,
    )
    # Under torchrun the rank is known before Lightning sets up: slice the batches now.
    rank = int(os.environ.get("RANK", 0))
    data = FixedBatches([rank_slice(b, rank, world) for b in batches], GLOBAL_BATCH // world)
    trainer.fit(method, datamodule=data)
    state = full_state(trainer, method)
    return {"losses": record.losses, "koleo": record.koleo, "state": state} if trainer.is_global_zero else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    parser.add_argument("--cases", required=True, help="JSON: {name: {overrides: [...], sync_batchnorm: bool}}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # Several methods in one launch: the process start (imports, process group) is paid once.
    results = {}
    for name, case in json.loads(Path(args.cases).read_text()).items():
        results[name] = run_case(args.strategy, case["overrides"], case.get("sync_batchnorm", False))
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    main()
