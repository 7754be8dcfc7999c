"""One tiny ViT training run shared by the eval and viz tests (trained once per process)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT, run_cli

_RUNS: dict[str, Path] = {}


def tiny_vit_run(tmp_path_factory) -> Path:
    """The run directory of a 2-step DINO run of a 2-block ViT on 256 texels (kNN callback
    off; the viz callback on, at the end)."""
    if "vit" not in _RUNS:
        run_dir = tmp_path_factory.mktemp("tiny_vit_run")
        result = run_cli(
            ["train", *TINY_DATA, *TINY_VIT, *TINY_HEAD, "trainer.max_steps=2", "callbacks.knn=null",
             f"hydra.run.dir={run_dir}"]
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        _RUNS["vit"] = run_dir
    return _RUNS["vit"]
