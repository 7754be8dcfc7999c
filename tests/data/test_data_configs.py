"""The data configs through the real Hydra composition, the datamodule's handling of
iterable datasets, the batch-size check, the bad-image report and the offline messages
of the torchvision datasets."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ssl_zoo.data.datamodule import SSLDataModule, check_batch_sizes, constructor_config
from ssl_zoo.data.sampling import EpochSampler
from ssl_zoo.data.transforms import EvalTransform, MultiCropTransform
from ssl_zoo.datasets.images import DataError
from ssl_zoo.datasets.shards import ShardDataset, write_shards
from ssl_zoo.datasets.torchvision_sets import CIFAR10, STL10
from tests.data.test_images import make_bad_tree
from tests.data.test_shards import make_tree

SMALL = ["data.image_size=16", "data.local_image_size=8", "data.batch_size=4", "data.num_workers=0"]


def _datamodule(cfg) -> SSLDataModule:
    transform = MultiCropTransform(global_size=16, local_size=8, n_local=2)
    return instantiate(constructor_config(cfg.data), train_transform=transform, eval_transform=EvalTransform(16), collate=None)


def test_imagefolder_config_with_and_without_knn(compose_cfg, tmp_path):
    make_tree(tmp_path / "train")
    make_tree(tmp_path / "val", n=9)
    dm = _datamodule(compose_cfg(["data=imagefolder", f"data.root={tmp_path / 'train'}", *SMALL]))
    dm.setup("fit")
    assert not dm.has_knn and len(dm.train_set) == 24
    assert isinstance(dm.train_dataloader().sampler, EpochSampler)

    cfg = compose_cfg(
        ["data=imagefolder", f"data.root={tmp_path / 'train'}", f"data.knn_train_root={tmp_path / 'train'}",
         f"data.knn_val_root={tmp_path / 'val'}", *SMALL]
    )  # fmt: skip
    dm = _datamodule(cfg)
    dm.setup("fit")
    assert dm.has_knn and dm.num_classes() == 3
    bank, queries = dm.knn_dataloaders()
    images, labels = next(iter(queries))
    assert tuple(images.shape[1:]) == (3, 16, 16) and set(labels.tolist()) <= {0, 1, 2}
    assert dm.bad_image_report() == {"count": 0, "examples": [], "reasons": {}}


def test_imagefolder_root_is_required(compose_cfg):
    cfg = compose_cfg(["data=imagefolder", *SMALL])
    with pytest.raises(Exception, match="data.root"):
        _datamodule(cfg)


def test_knn_class_mismatch_is_an_error(compose_cfg, tmp_path):
    make_tree(tmp_path / "train")
    make_tree(tmp_path / "val", n=4, classes=("ant", "bee", "dog"))
    cfg = compose_cfg(
        ["data=imagefolder", f"data.root={tmp_path / 'train'}", f"data.knn_train_root={tmp_path / 'train'}",
         f"data.knn_val_root={tmp_path / 'val'}", *SMALL]
    )  # fmt: skip
    with pytest.raises(DataError, match="different classes"):
        _datamodule(cfg).setup("fit")


def test_bad_image_report_through_the_datamodule(compose_cfg, tmp_path):
    info = make_bad_tree(tmp_path / "tree")
    cfg = compose_cfg(["data=imagefolder", f"data.root={tmp_path / 'tree'}", *SMALL, "data.num_workers=2"])
    dm = _datamodule(cfg)
    dm.setup("fit")
    for _ in dm.train_dataloader():
        pass
    for _ in dm.train_dataloader():  # a second epoch meets the same files again: still distinct
        pass
    report = dm.bad_image_report()
    assert report["count"] == len(info["bad"])
    assert len(report["examples"]) == 5 and set(report["reasons"]) == set(report["examples"])


def test_shards_config_streams_without_sampler_and_knows_its_length(compose_cfg, tmp_path):
    make_tree(tmp_path / "src")
    write_shards(str(tmp_path / "src"), str(tmp_path / "s"), shard_size=6, progress=False)
    # brace ranges are quoted for Hydra's override parser
    cfg = compose_cfg(["data=shards", f"data.urls=\"{tmp_path / 's'}/shard-{{000000..000003}}.tar\"", *SMALL])
    dm = _datamodule(cfg)
    dm.setup("fit")
    assert isinstance(dm.train_set, ShardDataset) and dm.train_set.seed == cfg.seed
    loader = dm.train_dataloader()
    assert not isinstance(loader.sampler, EpochSampler) and len(loader) == 6
    batches = list(loader)
    assert len(batches) == 6 and all(len(b[1]) == 4 for b in batches)
    assert not dm.has_knn


def test_shards_config_requires_urls(compose_cfg):
    with pytest.raises(Exception, match="data.urls"):
        _datamodule(compose_cfg(["data=shards", *SMALL]))


@pytest.mark.parametrize(("config", "folder"), [("cifar10", "cifar-10-batches-py"), ("stl10", "stl10_binary")])
def test_torchvision_configs_offline_say_how_to_provide_the_files(compose_cfg, tmp_path, config, folder):
    dm = _datamodule(compose_cfg([f"data={config}", f"data.root={tmp_path}", *SMALL]))
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(tmp_path) in message and folder in message
    assert "data.download=true" in message and "extracting it into" in message
    assert "data=imagefolder" in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing half-written


def test_torchvision_sets_half_present_files_are_called_corrupted(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DataError, match="incomplete or corrupted"):
        CIFAR10(str(tmp_path))
    with pytest.raises(DataError, match="split"):
        STL10(str(tmp_path), split="val")


def _trainer(devices=1, nodes=1, accumulate=1):
    return SimpleNamespace(num_devices=devices, num_nodes=nodes, accumulate_grad_batches=accumulate)


def test_check_batch_sizes_names_both_keys_and_the_numbers():
    dm = SSLDataModule(train_set=lambda transform: [0] * 100, batch_size=32, global_batch_size=256)
    assert check_batch_sizes(dm, _trainer(devices=4, accumulate=2)) == 256
    with pytest.raises(DataError) as info:
        check_batch_sizes(dm, _trainer(devices=2, nodes=1, accumulate=1))
    message = str(info.value)
    for text in ("data.global_batch_size=256", "data.batch_size", "32 x 2 x 1 x 1 = 64", "data.batch_size=128"):
        assert text in message
    with pytest.raises(DataError, match=r"data\.global_batch_size=256 is not divisible by .* = 3 x 1 x 1 = 3: set "
                                        r"data\.global_batch_size=255 or 258 \(data\.batch_size=85 or 86; now 32 x 3 x 1 x 1 = 96\)"):
        check_batch_sizes(dm, _trainer(devices=3))
    free = SSLDataModule(train_set=lambda transform: [0] * 100, batch_size=32)
    assert check_batch_sizes(free, _trainer(devices=2, nodes=2)) == 128
    with pytest.raises(ValueError, match="global_batch_size"):
        SSLDataModule(train_set=lambda transform: [], global_batch_size=0)


def test_setup_checks_the_batch_sizes_when_a_trainer_is_attached():
    dm = SSLDataModule(train_set=lambda transform: [torch.zeros(1)] * 100, batch_size=8, global_batch_size=16)
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=3, logger=False)
    with pytest.raises(DataError, match="8 x 1 x 1 x 3 = 24"):
        dm.setup("fit")


def test_knn_shares_have_equal_batch_counts_and_cover_each_image_once(compose_cfg, tmp_path, monkeypatch):
    """Under 2 processes, 13 bank images split 7 + 6: the short share is padded to as many
    batches (an FSDP2 forward is a collective), and only the real rows are kept."""
    from ssl_zoo.parallel import collectives

    make_tree(tmp_path / "train", n=12)  # + 1 below
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "train" / "ant" / "extra.png")
    make_tree(tmp_path / "val", n=3)
    cfg = compose_cfg(["data=imagefolder", f"data.root={tmp_path / 'train'}", f"data.knn_train_root={tmp_path / 'train'}",
                       f"data.knn_val_root={tmp_path / 'val'}", *SMALL, "+data.knn_batch_size=2"])
    dm = _datamodule(cfg)
    dm.setup("fit")
    assert len(dm.knn_train) == 13
    monkeypatch.setattr(collectives, "world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(collectives, "rank", lambda rank=rank: rank)
        bank, _ = dm.knn_dataloaders()
        shares.append((len(bank), bank.dataset.num_real, list(bank.dataset.indices)))
    assert shares[0][0] == shares[1][0] == 4  # 7 rows in batches of 2, both processes
    assert [s[1] for s in shares] == [7, 6]
    real = shares[0][2][:7] + shares[1][2][:6]
    assert sorted(real) == list(range(13))
