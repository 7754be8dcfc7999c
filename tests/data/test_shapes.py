import pytest
import torch

from ssl_zoo.datasets.shapes import SHAPE_NAMES, ShapesDataset
from ssl_zoo.eval.knn import knn_class_scores


@pytest.fixture(scope="module")
def small():
    return ShapesDataset("train", num_images=300, seed=0)


def test_types_shapes_and_classes(small):
    assert len(small) == 300
    assert small.images.shape == (300, 3, 32, 32)
    assert small.images.dtype == torch.uint8
    assert small.labels.dtype == torch.int64
    assert small.classes == list(SHAPE_NAMES[:10])
    assert small.num_classes == 10
    assert len(SHAPE_NAMES) >= 10
    image, label = small[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert isinstance(label, int) and 0 <= label < 10
    assert torch.equal(image, small.images[7]) and label == int(small.labels[7])


def test_images_are_not_flat(small):
    # textured backgrounds plus a shape: every image has a wide range of pixel values
    spread = small.images.flatten(1).float().std(dim=1)
    assert spread.min() > 10


def test_deterministic_per_seed_and_split(small):
    again = ShapesDataset("train", num_images=300, seed=0)
    assert torch.equal(small.images, again.images)
    assert torch.equal(small.labels, again.labels)
    other_seed = ShapesDataset("train", num_images=300, seed=1)
    val = ShapesDataset("val", num_images=300, seed=0)
    for other in (other_seed, val):
        assert not torch.equal(small.images, other.images)
        # not merely shifted: almost no image is repeated
        ours = {image.numpy().tobytes() for image in small.images}
        assert not ours & {image.numpy().tobytes() for image in other.images}


@pytest.mark.parametrize(
    ("num_images", "num_classes"), [(1000, 10), (1003, 10), (50, 2), (120, 12)]
)
def test_balanced(num_images, num_classes):
    ds = ShapesDataset("val", num_images=num_images, num_classes=num_classes, image_size=16)
    counts = torch.bincount(ds.labels, minlength=num_classes)
    assert len(ds.classes) == num_classes
    assert counts.sum() == num_images
    assert counts.max() - counts.min() <= 1


def test_transform_and_other_sizes():
    ds = ShapesDataset("train", num_images=20, image_size=64, transform=lambda x: x.float() / 255)
    image, _ = ds[3]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_raw_pixels_are_a_poor_feature():
    """Weighted kNN (k=20, T=0.07) on normalised raw pixels stays far from solving the task.

    At 8k train / 2k val it is about 0.36-0.38 (chance 0.10); here a smaller set for speed.
    """
    train = ShapesDataset("train", num_images=4000)
    val = ShapesDataset("val", num_images=1000)
    x_train, x_val = train.images.float() / 255, val.images.float() / 255
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    scores = knn_class_scores(
        ((x_train - mean) / std).flatten(1),
        train.labels,
        ((x_val - mean) / std).flatten(1),
        num_classes=10,
        k=20,
        temperature=0.07,
    )
    top1 = (scores.argmax(dim=1) == val.labels).float().mean().item()
    assert top1 <= 0.40


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": "test"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"image_size": 4}, "image_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": len(SHAPE_NAMES) + 1}, "num_classes"),
        ({"seed": -1}, "seed"),
        ({"transform": 3}, "transform"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShapesDataset(**{"num_images": 10, **kwargs})


def test_bad_split_lists_valid_ones():
    with pytest.raises(ValueError, match=r"\['train', 'val'\]"):
        ShapesDataset("test", num_images=10)
