import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.data.collate import MultiCropCollate
from ssl_zoo.data.masking import BlockMaskGenerator
from ssl_zoo.data.transforms import MultiCropTransform
from tests.data.conftest import IDENTITY, NO_AUGMENT

pytestmark = pytest.mark.usefixtures("one_thread")


class IndexColoured(Dataset):
    """Image i is constant with value v = 130 + i; label is 100 + i.

    Through a MultiCropTransform without augmentation except solarisation (threshold 128)
    of global view 1, global view 0 of image i is v / 255, global view 1 is (255 - v) / 255
    and every local crop is v / 255: each crop tells which image and view it came from.
    """

    def __init__(self, n, n_local=3):
        self.n = n
        self.transform = MultiCropTransform(
            global_size=16,
            local_size=8,
            n_global=2,
            n_local=n_local,
            **{**NO_AUGMENT, "global_solarize_p": (0.0, 1.0)},
            **IDENTITY,
        )

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.transform(torch.full((3, 20, 20), 130 + i, dtype=torch.uint8)), 100 + i


def test_view_major_order_shapes_and_labels():
    dataset = IndexColoured(5)
    batch = MultiCropCollate()([dataset[i] for i in (4, 0, 2)])
    assert set(batch) == {"global_crops", "local_crops", "labels"}
    assert batch["global_crops"].shape == (6, 3, 16, 16)
    assert batch["local_crops"].shape == (9, 3, 8, 8)
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [104, 100, 102]

    values = batch["global_crops"].mean(dim=(1, 2, 3)) * 255
    v = [134, 130, 132]
    expected = v + [255 - x for x in v]  # all images' view 0, then all images' view 1
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float32))
    local_values = batch["local_crops"].mean(dim=(1, 2, 3)) * 255
    torch.testing.assert_close(local_values, torch.tensor(v * 3, dtype=torch.float32))
    # each view is one contiguous chunk
    view0, view1 = batch["global_crops"].chunk(2)
    torch.testing.assert_close(view0 + view1, torch.ones_like(view0))


def test_no_local_crops_gives_none():
    dataset = IndexColoured(4, n_local=0)
    batch = MultiCropCollate()([dataset[i] for i in range(4)])
    assert batch["local_crops"] is None
    assert batch["global_crops"].shape == (8, 3, 16, 16)


def test_masks_and_weights():
    torch.manual_seed(0)
    dataset = IndexColoured(8, n_local=0)
    collate = MultiCropCollate(BlockMaskGenerator(4), (0.1, 0.5), mask_probability=0.5)
    batch = collate([dataset[i] for i in range(8)])
    masks, weights = batch["masks"], batch["mask_weights"]
    assert masks.shape == (16, 16) and masks.dtype == torch.bool
    assert weights.shape == (16,) and weights.dtype == torch.float32
    counts = masks.sum(dim=1)
    assert int((counts > 0).sum()) == 8  # half of the 2 * 8 global crops
    torch.testing.assert_close(weights, 1.0 / counts.clamp(min=1).float())
    assert counts.max() <= 8  # at most half of the 16 patches


def test_masks_differ_across_dataloader_workers():
    """Masks are drawn in the workers from torch's per-worker seeded generator: the first
    batch of each worker must not be the same."""
    dataset = IndexColoured(16, n_local=0)
    collate = MultiCropCollate(BlockMaskGenerator(6), (0.2, 0.5), mask_probability=1.0)
    loader = DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=collate)
    first, second = list(loader)
    assert first["masks"].shape == (16, 36)
    assert not torch.equal(first["masks"], second["masks"])


def test_inconsistent_samples_and_bad_arguments():
    dataset = IndexColoured(2)
    a, b = dataset[0], dataset[1]
    b[0]["local_crops"].pop()
    with pytest.raises(ValueError, match="local_crops"):
        MultiCropCollate()([a, b])
    with pytest.raises(ValueError, match="empty"):
        MultiCropCollate()([])
    with pytest.raises(ValueError, match="mask_probability"):
        MultiCropCollate(BlockMaskGenerator(4), mask_probability=2.0)
    with pytest.raises(ValueError, match="mask_ratio_min_max"):
        MultiCropCollate(BlockMaskGenerator(4), mask_ratio_min_max=(0.6, 0.5))
    with pytest.raises(ValueError, match="mask_generator"):
        MultiCropCollate(mask_generator=4)
