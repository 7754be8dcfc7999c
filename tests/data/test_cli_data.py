"""`ssl-zoo data shard` as a user runs it, and training on what it writes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_VIT, read_summary, run_cli
from tests.data.test_images import make_bad_tree
from tests.data.test_shards import make_tree


def test_data_shard_writes_shards_index_and_says_how_to_train(tmp_path):
    make_tree(tmp_path / "src", n=10)
    result = run_cli(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--shard-size", "4", "--prefix", "tr"])
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["tr-000000.tar", "tr-000001.tar", "tr-000002.tar", "tr-index.json"]
    index = json.loads((tmp_path / "out" / "tr-index.json").read_text())
    assert index["num_samples"] == 10 and index["classes"] == ["ant", "bee", "cat"]
    assert "wrote 10 images (3 classes) in 3 shard(s)" in result.stdout
    assert "data=shards" in result.stdout and "tr-{000000..000002}.tar" in result.stdout


def test_data_shard_errors_are_one_clear_line(tmp_path):
    result = run_cli(["data", "shard", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.returncode == 1
    assert "error:" in result.stderr and "does not exist" in result.stderr and "Traceback" not in result.stderr
    usage = run_cli(["data"])
    assert usage.returncode == 2 and "shard" in usage.stderr


@pytest.mark.slow
def test_train_on_shards_and_on_a_folder_with_bad_images(tmp_path):
    make_bad_tree(tmp_path / "src", n_good=12)
    shard = run_cli(["data", "shard", str(tmp_path / "src"), str(tmp_path / "shards"), "--shard-size", "8", "--quiet"])
    assert shard.returncode == 0, shard.stderr[-2000:]
    assert "skipped bad files: 7" in shard.stdout
    common = [
        *TINY_VIT, "method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16",
        "data.image_size=16", "data.local_image_size=8", "augmentation.transform.n_local=2",
        "data.batch_size=4", "data.num_workers=2", "trainer.max_steps=3", "logger=csv",
        "callbacks.progress=null",
    ]  # fmt: skip
    run_dir = tmp_path / "run_shards"
    urls = f"data.urls=\"{tmp_path / 'shards'}/shard-{{000000..000003}}.tar\""
    result = run_cli(["train", "data=shards", urls, *common, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(run_dir)["steps"] == 3

    run_dir = tmp_path / "run_folder"
    result = run_cli(["train", "data=imagefolder", f"data.root={tmp_path / 'src'}", *common, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(run_dir)["steps"] == 3
    assert "skipping 7 bad file(s)" in result.stderr

    result = run_cli(["train", "data=imagefolder", f"data.root={tmp_path / 'src'}", "data.on_bad_image=raise",
                      *common, f"hydra.run.dir={tmp_path / 'run_raise'}"])  # fmt: skip
    assert result.returncode != 0
    assert "bad image" in result.stderr and str(tmp_path / "src") in result.stderr
