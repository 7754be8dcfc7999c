"""Shards under real DDP: two gloo processes, two DataLoader workers each, through the CLI.
Every sample has its own class folder, so the labels a rank trains on name its samples."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from ssl_zoo.datasets.shards import write_shards
from tests.conftest import REPO_ROOT, TINY_HEAD, run_cli

pytestmark = pytest.mark.slow

N_SAMPLES, BATCH, WORLD = 48, 4, 2


class LabelRecorder(L.Callback):
    """Writes the labels of every training batch this rank saw to <out_dir>/rank<r>.json."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.labels = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels.extend(int(x) for x in batch["labels"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.labels))


def test_two_processes_split_the_shards_without_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(N_SAMPLES):
        path = tmp_path / "src" / f"c{i:02d}" / "img.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    write_shards(str(tmp_path / "src"), str(tmp_path / "shards"), shard_size=5, progress=False)
    seen = tmp_path / "seen"
    result = run_cli(
        [
            "train",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            "data=shards",
            f"data.urls={tmp_path / 'shards'}/shard-*.tar",
            f"data.batch_size={BATCH}",
            "data.num_workers=2",
            "data.image_size=32",
            "data.local_image_size=16",
            "augmentation.transform.n_local=2",
            *TINY_HEAD,
            "callbacks.knn=null",
            "callbacks.progress=null",
            "logger=csv",
            f"+callbacks.record._target_={__name__}.LabelRecorder",
            f"+callbacks.record.out_dir={seen}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        timeout=900,
        env={"PYTHONPATH": str(REPO_ROOT)},  # the relaunched rank imports the recorder too
    )
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [json.loads((seen / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # one epoch: each rank takes the same number of full batches, together every sample once
    assert [len(labels) for labels in per_rank] == [N_SAMPLES // WORLD] * WORLD
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == list(range(N_SAMPLES)), json.dumps(per_rank)
