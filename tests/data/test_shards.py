"""Tar shards: folder -> shards -> samples round trip, the split over ranks and workers,
the epoch length, url expansion, and bad images inside shards."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssl_zoo.datasets.imagefolder import ImageFolder
from ssl_zoo.datasets.images import DataError, load_image
from ssl_zoo.datasets.shards import ShardDataset, _samples, expand_urls, write_shards
from tests.data.test_images import make_bad_tree


def make_tree(root, n=24, classes=("ant", "bee", "cat"), size=(9, 7)):
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / classes[i % len(classes)] / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return root


def digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "src")


def test_round_trip_same_bytes_labels_and_classes(tree, tmp_path):
    index = write_shards(str(tree), str(tmp_path / "out"), shard_size=5, prefix="train", progress=False)
    assert index["num_samples"] == 24 and index["classes"] == ["ant", "bee", "cat"]
    assert [s["num_samples"] for s in index["shards"]] == [5, 5, 5, 5, 4]
    assert json.loads((tmp_path / "out" / "train-index.json").read_text()) == index

    folder = ImageFolder(tree)
    by_path = {os.path.relpath(folder.path(i), tree): i for i in range(len(folder))}
    seen = set()
    for shard in sorted((tmp_path / "out").glob("train-*.tar")):
        for _, sample in _samples(str(shard)):
            meta = json.loads(sample["json"])
            i = by_path[meta["path"]]
            assert sample["png"] == open(folder.path(i), "rb").read()  # the original bytes
            assert int(sample["cls"]) == meta["label"] == folder.label(i)
            seen.add(meta["path"])
    assert seen == set(by_path)

    # training reads the same images: decoded pixels and labels, as multisets
    dataset = ShardDataset(str(tmp_path / "out" / "train-{000000..000004}.tar"))
    assert len(dataset) == 24 and dataset.classes == ["ant", "bee", "cat"]
    from_shards = sorted((digest(image), label) for image, label in dataset)
    from_folder = sorted((digest(load_image(folder.path(i))), folder.label(i)) for i in range(24))
    assert from_shards == from_folder


def test_writer_is_deterministic_and_refuses_to_overwrite(tree, tmp_path):
    a = write_shards(str(tree), str(tmp_path / "a"), shard_size=10, progress=False)
    write_shards(str(tree), str(tmp_path / "b"), shard_size=10, progress=False)
    for shard in a["shards"]:
        assert (tmp_path / "a" / shard["name"]).read_bytes() == (tmp_path / "b" / shard["name"]).read_bytes()
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        write_shards(str(tree), str(tmp_path / "a"), progress=False)
    write_shards(str(tree), str(tmp_path / "a"), shard_size=30, overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == ["shard-000000.tar"]


def _epoch(dataset, rank, world, workers, batch_size):
    dataset.configure(batch_size, workers, rank=rank, world_size=world)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)
    assert len(loader) == dataset.plan["batches"]
    items = [digest(image) for images, _ in loader for image in images]
    assert len(items) == len(loader) * batch_size
    return items


@pytest.mark.parametrize(
    ("shard_size", "world", "workers", "batch"),
    [(3, 2, 2, 2), (12, 2, 2, 2), (3, 1, 0, 2), (5, 2, 2, 2), (7, 2, 2, 2), (12, 2, 2, 4), (5, 3, 2, 3)],
)
def test_ranks_and_workers_split_without_duplicates(tree, tmp_path, shard_size, world, workers, batch):
    # 24 samples in shards of 3 (shard-level split), 5 or 7 (uneven deals: short readers
    # take the others' surplus) or 12 (fewer shards than the readers: every n-th sample;
    # with batch 4 the two workers of a rank have unequal quotas).
    write_shards(str(tree), str(tmp_path / "s"), shard_size=shard_size, progress=False)
    urls = str(tmp_path / "s" / "*.tar")
    per_rank = [_epoch(ShardDataset(urls, shuffle_buffer=4, seed=3), r, world, workers, batch) for r in range(world)]
    everything = [x for items in per_rank for x in items]
    per_rank_samples = 24 // (world * batch) * batch
    assert all(len(items) == per_rank_samples for items in per_rank)  # same steps on every rank
    assert len(set(everything)) == len(everything) == world * per_rank_samples  # no repeats
    if per_rank_samples * world == 24:
        assert len(set(everything)) == 24  # nothing missing


def test_epochs_reshuffle_and_len_is_per_rank(tree, tmp_path):
    write_shards(str(tree), str(tmp_path / "s"), shard_size=3, progress=False)
    dataset = ShardDataset(str(tmp_path / "s" / "shard-{000000..000007}.tar"), shuffle_buffer=8, seed=0)
    dataset.configure(batch_size=5, num_workers=0, rank=1, world_size=2)
    assert len(dataset) == 10  # 24 // (2 x 5) = 2 batches of 5
    first = [digest(x) for x, _ in dataset]
    second = [digest(x) for x, _ in dataset]
    assert len(first) == len(second) == 10 and first != second


def test_index_or_num_samples_is_required(tree, tmp_path):
    write_shards(str(tree), str(tmp_path / "s"), shard_size=10, progress=False)
    (tmp_path / "s" / "shard-index.json").unlink()
    with pytest.raises(DataError, match="no sample count.*data.num_samples"):
        ShardDataset(str(tmp_path / "s" / "*.tar"))
    dataset = ShardDataset(str(tmp_path / "s" / "*.tar"), num_samples=24)
    assert len(dataset) == 24 and len(list(dataset)) == 24


def test_url_expansion_and_errors(tree, tmp_path):
    write_shards(str(tree), str(tmp_path / "s"), shard_size=10, progress=False)
    shards = sorted(str(p) for p in (tmp_path / "s").glob("*.tar"))
    assert expand_urls(str(tmp_path / "s" / "shard-{000000..000002}.tar")) == shards
    assert expand_urls(str(tmp_path / "s" / "shard-00000[01].tar")) == shards[:2]
    assert expand_urls(shards[::-1]) == shards[::-1]
    with pytest.raises(DataError, match=r"no shard at .*shard-000003\.tar.* and 4 more"):
        expand_urls(str(tmp_path / "s" / "shard-{000000..000009}.tar"))
    with pytest.raises(DataError, match="only local paths"):
        expand_urls("https://example.com/a.tar")
    with pytest.raises(DataError, match="data.urls is not set"):
        expand_urls("")


def test_bad_images_in_shards_are_skipped_and_counted(tmp_path):
    make_bad_tree(tmp_path / "src")
    index = write_shards(str(tmp_path / "src"), str(tmp_path / "s"), shard_size=7, progress=False)
    assert index["skipped_bad_images"] == 7  # the setup kinds stay out of the shards
    urls = str(tmp_path / "s" / "*.tar")
    dataset = ShardDataset(urls, transform=lambda x: x[:, :1, :1])
    assert len(list(dataset)) == index["num_samples"] - 1  # one pass: every good sample once
    report = dataset.bad_log.report()
    assert report["count"] == 1  # corrupt_data.jpg, found when decoded
    assert all(".tar:" in name for name in report["examples"])
    # in workers, with a quota per epoch: the batches stay full
    dataset = ShardDataset(urls, transform=lambda x: x[:, :1, :1])
    dataset.configure(batch_size=3, num_workers=2, rank=0, world_size=1)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, drop_last=True)
    assert sum(len(x) for x, _ in loader) == len(dataset) == 18

    raising = ShardDataset(str(tmp_path / "s" / "*.tar"), on_bad_image="raise")
    with pytest.raises(DataError, match=r"\.tar:\d+\.jpg.*data.on_bad_image=raise"):
        list(raising)


def test_verify_keeps_corrupt_files_out(tmp_path):
    make_bad_tree(tmp_path / "src")
    index = write_shards(str(tmp_path / "src"), str(tmp_path / "s"), verify=True, progress=False)
    assert index["skipped_bad_images"] == 8
    assert len(list(ShardDataset(str(tmp_path / "s" / "*.tar")))) == index["num_samples"]


def test_too_few_samples_for_a_batch(tree, tmp_path):
    write_shards(str(tree), str(tmp_path / "s"), progress=False)
    dataset = ShardDataset(str(tmp_path / "s" / "*.tar"))
    with pytest.raises(DataError, match="no full batch of data.batch_size=16 on each of 2"):
        dataset.configure(batch_size=16, num_workers=1, rank=0, world_size=2)
