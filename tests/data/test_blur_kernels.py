"""MultiCropTransform's blur_kernel: each reference's blur (issue #21).

A view is rendered from hand-made choices (ViewOps): the whole image (scale 1, aspect 1),
no other op and no normalisation, so the output is the blur alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageFilter

from ssl_zoo.data.transforms import BOX_DRAWS, MultiCropTransform, ViewOps, byol_blur_kernel_size
from tests.data.conftest import IDENTITY, NO_AUGMENT

pytestmark = pytest.mark.usefixtures("one_thread")


def blurred(kernel, image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The (3, S, S) uint8 image blurred by MultiCropTransform(blur_kernel=kernel), in [0, 1]."""
    size = image.shape[-1]
    transform = MultiCropTransform(
        global_size=size, global_scale=(1.0, 1.0), blur_kernel=kernel, **NO_AUGMENT, **IDENTITY
    )
    # draws[1] = 0.5: aspect ratio exp(0) = 1, the box is the whole image
    whole = ViewOps((0.5,) * BOX_DRAWS, False, (), (0.0,) * 4, False, sigma, False)
    return transform.render_views(image, size, (1.0, 1.0), [whole])[0]


@pytest.fixture(scope="module")
def image():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_pil_kernel_is_pils_gaussian_blur(image, sigma):
    """DINO's utils.GaussianBlur: PIL ImageFilter.GaussianBlur(radius=sigma) on 8 bits."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(sigma))
    expected = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(blurred("pil", image, sigma), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [40, 20])
def test_fixed_kernel_has_the_same_taps_at_every_size(image, size):
    """DINOv2: torchvision GaussianBlur(kernel_size=9) at global and local sizes."""
    small = image[:, :size, :size].contiguous()
    expected = F.gaussian_blur(small.float() / 255, [9, 9], [1.3, 1.3])
    torch.testing.assert_close(blurred(9, small, 1.3), expected, atol=1e-5, rtol=0)


def test_byol_kernel_is_a_zero_padded_convolution_of_side_over_ten_taps(image):
    """deepmind-research byol augmentations.py: kernel_size = side / 10, radius int(k / 2),
    a 'SAME' convolution (zeros beyond the border, so the border darkens)."""
    assert [byol_blur_kernel_size(s) for s in (224, 100, 96, 40, 16)] == [23, 11, 9, 5, 1]
    sigma, radius = 1.6, 2  # 40 px: 4.0 / 2 -> radius 2, 5 taps
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    taps = taps / taps.sum()
    planes = (image.float() / 255).unsqueeze(1)  # (3, 1, S, S): one plane per channel
    rows = nnf.conv2d(planes, taps.view(1, 1, 1, -1), padding=(0, radius))
    expected = nnf.conv2d(rows, taps.view(1, 1, -1, 1), padding=(radius, 0)).squeeze(1)
    ours = blurred("byol", image, sigma)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # a border the reflect-padded blur of the same taps does not darken
    reflect = F.gaussian_blur(image.float() / 255, [5, 5], [sigma, sigma])
    assert (ours[:, 0] < reflect[:, 0] - 0.05).float().mean() > 0.5


def test_tenth_of_crop_is_the_default_and_unchanged(image):
    expected = F.gaussian_blur(image.float() / 255, [5, 5], [0.9, 0.9])  # 40 px: 5 taps
    torch.testing.assert_close(blurred("tenth_of_crop", image, 0.9), expected, atol=1e-5, rtol=0)
    assert MultiCropTransform(global_size=8, local_size=8).blur_kernel == "tenth_of_crop"


def test_solarize_threshold_in_8_bit_levels():
    """Values >= threshold / 255 are inverted: level 128 by 127.5 (BYOL's 0.5 on floats)
    and 128 (RandomSolarize(128)), not by 128.5."""
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    for threshold, expected in ((127.5, 1 - 128 / 255), (128, 1 - 128 / 255), (128.5, 128 / 255)):
        transform = MultiCropTransform(
            global_size=8, local_size=8, n_local=0, global_scale=(1.0, 1.0),
            solarize_threshold=threshold, **{**NO_AUGMENT, "global_solarize_p": 1.0}, **IDENTITY,
        )  # fmt: skip
        out = transform(image)["global_crops"][0]
        torch.testing.assert_close(out, torch.full_like(out, expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"blur_kernel": "gaussian"}, "blur_kernel"),
        ({"blur_kernel": 4}, "blur_kernel"),
        ({"blur_kernel": 0}, "blur_kernel"),
        ({"blur_kernel": True}, "blur_kernel"),
        ({"solarize_threshold": -1}, "solarize_threshold"),
        ({"solarize_threshold": "128"}, "solarize_threshold"),
    ],
)
def test_bad_blur_kernel_and_threshold(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiCropTransform(**kwargs)
