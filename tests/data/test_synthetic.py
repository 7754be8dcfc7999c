"""The procedural generators of ssl_zoo/datasets/synthetic.py (the default data and the
candidates of docs/default_data.md)."""

import pytest
import torch

from ssl_zoo.datasets.synthetic import FractalsDataset, PatternsDataset, TexelsDataset
from ssl_zoo.eval.knn import knn_class_scores

GENERATORS = [TexelsDataset, PatternsDataset, FractalsDataset]


@pytest.mark.parametrize("cls", GENERATORS)
def test_balanced_deterministic_uint8(cls):
    data = cls("train", num_images=103, seed=3)
    assert data.images.shape == (103, 3, 32, 32) and data.images.dtype == torch.uint8
    counts = torch.bincount(data.labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and len(data.classes) == 10
    again = cls("train", num_images=103, seed=3)
    assert torch.equal(data.images, again.images) and torch.equal(data.labels, again.labels)
    other = cls("val", num_images=103, seed=3)
    assert not torch.equal(data.images, other.images)
    assert data.images.flatten(1).float().std(dim=1).min() > 5  # no flat image
    image, label = data[5]
    assert torch.equal(image, data.images[5]) and label == int(data.labels[5])


def test_texels_are_grey_and_cover_the_frame():
    data = TexelsDataset("train", num_images=200)
    images = data.images.float()
    # grey: the channels differ by pixel noise only
    assert (images[:, 0] - images[:, 1]).mean(dim=(1, 2)).abs().max() < 2
    # the class is everywhere: each quadrant of most images holds dark texel pixels
    dark = images.mean(1) < 0.45 * 255
    quadrants = [dark[:, :16, :16], dark[:, :16, 16:], dark[:, 16:, :16], dark[:, 16:, 16:]]
    covered = torch.stack([q.flatten(1).any(1) for q in quadrants], 1).all(1).float().mean()
    assert covered > 0.9


def test_texels_raw_pixels_are_a_poor_feature():
    train, val = TexelsDataset("train", num_images=3000), TexelsDataset("val", num_images=600)
    scores = knn_class_scores(train.images.flatten(1).float(), train.labels, val.images.flatten(1).float(), 10)
    top1 = (scores.argmax(1) == val.labels).float().mean().item()
    assert top1 < 0.2  # chance is 0.1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"split": "test"}, "split"), ({"num_images": 0}, "num_images"), ({"image_size": 8}, "image_size"),
     ({"num_classes": 1}, "num_classes"), ({"num_classes": 13}, "num_classes"), ({"seed": -1}, "seed"),
     ({"transform": 3}, "transform")],
)
def test_bad_arguments_name_the_key(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TexelsDataset(**{"num_images": 10, **kwargs})
