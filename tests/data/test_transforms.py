import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    MultiCropTransform,
    blur_kernel_size,
)
from ssl_zoo.datasets.shapes import ShapesDataset
from tests.data.conftest import IDENTITY, NO_AUGMENT

pytestmark = pytest.mark.usefixtures("one_thread")


def constant_image(value, size=32):
    return torch.full((3, size, size), value, dtype=torch.uint8)


def test_output_structure_shapes_dtypes():
    transform = MultiCropTransform(global_size=32, local_size=16, n_global=2, n_local=3)
    image = ShapesDataset("train", num_images=1)[0][0]
    out = transform(image)
    assert set(out) == {"global_crops", "local_crops"}
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 3
    for crop in out["global_crops"]:
        assert crop.shape == (3, 32, 32) and crop.dtype == torch.float32
        assert type(crop) is torch.Tensor
    for crop in out["local_crops"]:
        assert crop.shape == (3, 16, 16) and crop.dtype == torch.float32


def test_pil_and_tensor_inputs_give_same_shapes():
    transform = MultiCropTransform(global_size=24, local_size=12, n_local=2)
    array = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    from_pil = transform(Image.fromarray(array))
    from_tensor = transform(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    for key in ("global_crops", "local_crops"):
        assert [c.shape for c in from_pil[key]] == [c.shape for c in from_tensor[key]]
        assert all(c.dtype == torch.float32 for c in from_pil[key])
    # grayscale PIL images are converted to RGB
    gray = transform(Image.fromarray(array[..., 0]))
    assert gray["global_crops"][0].shape == (3, 24, 24)


def test_normalised_once_at_the_end():
    transform = MultiCropTransform(global_size=16, local_size=8, n_local=1, **NO_AUGMENT)
    out = transform(constant_image(200))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (200 / 255 - mean) / std
    for crop in out["global_crops"] + out["local_crops"]:
        torch.testing.assert_close(crop, expected.expand_as(crop), atol=1e-5, rtol=0)


def test_realistic_statistics_after_full_augmentation():
    transform = MultiCropTransform(global_size=32, local_size=16, n_local=2)
    ds = ShapesDataset("train", num_images=64, transform=transform)
    crops = torch.stack([ds[i][0]["global_crops"][0] for i in range(len(ds))])
    assert crops.isfinite().all()
    # normalised with ImageNet statistics: roughly centred, roughly unit scale
    assert crops.mean().abs() < 1.0
    assert 0.3 < crops.std() < 2.0


def test_per_view_solarisation_and_scalar_broadcast():
    transform = MultiCropTransform(
        global_size=16,
        local_size=8,
        n_local=2,
        **{**NO_AUGMENT, "global_solarize_p": (0.0, 1.0), "local_solarize_p": 1.0},
        **IDENTITY,
    )
    out = transform(constant_image(200))
    g0, g1 = out["global_crops"]
    torch.testing.assert_close(g0, torch.full_like(g0, 200 / 255))
    torch.testing.assert_close(g1, torch.full_like(g1, 55 / 255))  # solarised: 255 - 200
    for crop in out["local_crops"]:
        torch.testing.assert_close(crop, torch.full_like(crop, 55 / 255))

    one = MultiCropTransform(n_global=1, global_blur_p=1.0, global_solarize_p=0.0)
    assert one.global_blur_p == (1.0,) and len(one.global_transforms) == 1
    three = MultiCropTransform(n_global=3, global_blur_p=0.5, global_solarize_p=(0, 0, 0.2))
    assert three.global_blur_p == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["global_blur_p", "global_solarize_p"])
def test_per_view_length_must_match_n_global(name):
    kwargs = {"n_global": 3, "global_blur_p": (1, 1, 1), "global_solarize_p": (0, 0, 0)}
    kwargs[name] = (1.0, 0.1)
    with pytest.raises(ValueError, match=f"{name}.*n_global=3"):
        MultiCropTransform(**kwargs)


def test_no_local_crops():
    out = MultiCropTransform(global_size=16, n_local=0)(constant_image(9))
    assert out["local_crops"] == [] and len(out["global_crops"]) == 2


def test_blur_kernel_is_odd_and_about_ten_percent():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(96) == 9
    assert blur_kernel_size(32) == 3
    for size in range(1, 300):
        k = blur_kernel_size(size)
        assert k % 2 == 1 and k >= 3
        assert k == 3 or abs(k - 0.1 * size) <= 1


def _crop_area_fractions(transform, key, n_images, side=256):
    """Area fraction of each crop box, read back from a coordinate-ramp image.

    Channel 0 holds the column index and channel 1 the row index (side=256 fits uint8).
    With every augmentation off and identity normalisation, output pixel k of a crop of
    width w starting at column j (out size L) is about j - 0.5 + (k + 0.5) w / L, so the
    slope between interior pixels (away from the resampling border) gives w, likewise h.
    """
    ramp = torch.arange(side, dtype=torch.uint8)
    image = torch.stack(
        [ramp.expand(side, side), ramp[:, None].expand(side, side), torch.zeros(side, side)]
    ).to(torch.uint8)
    fractions = []
    for _ in range(n_images):
        for crop in transform(image)[key]:
            crop = crop * 255
            size = crop.shape[-1]
            a, b = 3, size - 4
            width = (crop[0, size // 2, b] - crop[0, size // 2, a]) * size / (b - a)
            height = (crop[1, b, size // 2] - crop[1, a, size // 2]) * size / (b - a)
            fractions.append(float(width * height) / side**2)
    return torch.tensor(fractions)


@pytest.mark.parametrize(
    ("global_scale", "local_scale"), [((0.4, 1.0), (0.05, 0.4)), ((0.25, 0.5), (0.1, 0.2))]
)
def test_crop_area_fraction_within_configured_scale(global_scale, local_scale):
    torch.manual_seed(0)
    transform = MultiCropTransform(
        global_size=32,
        local_size=32,
        n_global=2,
        n_local=4,
        global_scale=global_scale,
        local_scale=local_scale,
        **NO_AUGMENT,
        **IDENTITY,
    )
    for key, (low, high) in (("global_crops", global_scale), ("local_crops", local_scale)):
        fractions = _crop_area_fractions(transform, key, n_images=50)
        tol = 0.02  # integer box sides and uint8 rounding of the ramp
        assert fractions.min() >= low - tol, key
        assert fractions.max() <= high + tol, key
        # and the range is actually used, not a fixed scale
        width = high - low
        assert fractions.min() <= low + 0.25 * width, key
        assert fractions.max() >= high - 0.25 * width, key


def test_eval_transform():
    transform = EvalTransform(size=32)
    assert transform.resize_size == round(32 / 0.875) == 37
    array = np.random.default_rng(0).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)
    from_pil = transform(Image.fromarray(array))
    from_tensor = transform(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    assert from_pil.shape == (3, 32, 32) and from_pil.dtype == torch.float32
    torch.testing.assert_close(from_pil, from_tensor)  # deterministic, same pixels

    out = EvalTransform(size=16)(constant_image(100, size=20))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, ((100 / 255 - mean) / std).expand(3, 16, 16))
    assert EvalTransform()(constant_image(1, size=300)).shape == (3, 224, 224)


def test_eval_transform_centre_crops():
    # 64 px, white inside [8, 56): resized to round(28 / 0.875) = 32 (white in [4, 28)),
    # then the centre 28 px [2, 30) are kept: white centre, black corners
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, 8:56, 8:56] = 255
    out = EvalTransform(size=28, crop_fraction=0.875, **IDENTITY)(image)
    assert out[:, 14, 14].min() > 0.99  # centre is white
    assert math.isclose(out[:, 0, 0].max().item(), 0.0, abs_tol=0.1)  # corner is black


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"global_size": 0}, "global_size"),
        ({"local_size": -1}, "local_size"),
        ({"n_global": 0}, "n_global"),
        ({"n_local": -1}, "n_local"),
        ({"global_scale": (0.0, 1.0)}, "global_scale"),
        ({"global_scale": (0.6, 0.5)}, "global_scale"),
        ({"local_scale": (0.1, 1.5)}, "local_scale"),
        ({"local_scale": 0.3}, "local_scale"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"color_jitter_p": -0.1}, "color_jitter_p"),
        ({"brightness": -1}, "brightness"),
        ({"contrast": -0.1}, "contrast"),
        ({"saturation": -2}, "saturation"),
        ({"hue": 0.6}, "hue"),
        ({"grayscale_p": 2}, "grayscale_p"),
        ({"global_blur_p": (1.0, 1.1)}, "global_blur_p"),
        ({"local_blur_p": -1}, "local_blur_p"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
        ({"global_solarize_p": (0.0, -0.2)}, "global_solarize_p"),
        ({"local_solarize_p": 1.1}, "local_solarize_p"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_multicrop_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiCropTransform(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 0}, "size"),
        ({"crop_fraction": 0.0}, "crop_fraction"),
        ({"crop_fraction": 1.5}, "crop_fraction"),
        ({"std": (1, 1, -1)}, "std"),
    ],
)
def test_eval_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EvalTransform(**kwargs)


def test_bad_inputs():
    transform = MultiCropTransform(global_size=16, n_local=0)
    with pytest.raises(ValueError, match="uint8"):
        transform(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="uint8"):
        transform(torch.zeros(16, 16, 3, dtype=torch.uint8))
    with pytest.raises(TypeError):
        transform([[0]])
