"""The fast multi-crop path against torchvision: the same ops (float, op by op), the same
crop statistics as a straightforward PIL + torchvision-v1 pipeline (with JPEG draft
decoding), and the decode-size rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from ssl_zoo.data import kernels
from ssl_zoo.data import transforms as fast
from ssl_zoo.data.transforms import EvalTransform, MultiCropTransform, min_crop_side
from ssl_zoo.datasets.images import load_image
from tests.data.conftest import IDENTITY, NO_AUGMENT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 40, 40, generator=g)
    x[0, :, :5, :5] = 0.5  # gray pixels (zero chroma) and exact 0 / 1 values
    x[1, 0] = 0.0
    x[1, 1, :10] = 1.0
    return x


def _run(op, image: torch.Tensor, *args) -> torch.Tensor:
    """A kernel op on a copy of one (3, H, W) image."""
    out = image.clone()
    op(out.numpy().reshape(3, -1), *args)
    return out


@pytest.mark.parametrize("factor", [0.0, 0.1, 0.6, 0.999999, 1.0, 1.1, 1.4, 2.5])
def test_jitter_ops_match_torchvision(images, factor):
    g = torch.Generator().manual_seed(1)
    extremes = torch.stack([torch.ones(3, 40, 40), torch.zeros(3, 40, 40)])
    extremes[1, :, :8] = torch.rand(3, 8, 40, generator=g)
    for op, reference in (
        (kernels.brightness_, F.adjust_brightness),
        (kernels.contrast_, F.adjust_contrast),
        (kernels.saturation_, F.adjust_saturation),
    ):
        for image in (*images, *extremes):
            ours = _run(op, image, factor)
            assert 0.0 <= ours.min() and ours.max() <= 1.0, (op.__name__, factor)
            torch.testing.assert_close(ours, reference(image, factor), atol=2e-6, rtol=0)


@pytest.mark.parametrize("factor", [-0.5, -0.25, -0.1, -0.013, 0.0, 0.05, 0.1, 0.37, 0.5])
def test_hue_matches_torchvision(images, factor):
    for image in images:
        expected = F.adjust_hue(image, factor)
        torch.testing.assert_close(_run(kernels.hue_, image, factor), expected, atol=2e-5, rtol=0)


def test_color_jitter_applies_the_ops_in_the_given_order(images):
    factors = np.array([1.3, 0.7, 1.4, 0.08], dtype=np.float32)
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for order in ((0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1), (1, -1, -1, -1), (-1,) * 4):
        expected = images[1]
        for op in order:
            if op >= 0:
                expected = fns[op](expected, float(factors[op]))
        ours = _run(kernels.color_jitter_, images[1], np.array(order, dtype=np.int8), factors)
        torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)


def test_grayscale_solarize_blur_match_torchvision(images):
    for image in images:
        gray = _run(kernels.to_gray_, image)
        torch.testing.assert_close(gray, F.rgb_to_grayscale(image, 3), atol=1e-6, rtol=0)
        solarized = _run(kernels.solarize_, image, 128 / 255)
        torch.testing.assert_close(solarized, F.solarize(image, 128 / 255), atol=1e-6, rtol=0)
    for size in (1, 2, 3, 5, 16, 40, 200):  # tiny crops: pads wider than the image
        x = torch.rand(2, 3, size, size)
        kernel = fast.blur_kernel_size(size) if size > 5 else 9
        for sigma in (0.1, 0.8, 2.0):
            ours = fast.gaussian_blur(x, kernel, [sigma, sigma])
            if kernel // 2 < size:  # torchvision pads once
                expected = torch.stack(
                    [F.gaussian_blur(v, [kernel, kernel], [sigma, sigma]) for v in x]
                )
            else:  # pads wider than the image: numpy's repeated reflection
                expected = torch.from_numpy(_numpy_blur(x.numpy(), kernel, sigma))
            torch.testing.assert_close(ours, expected, atol=3e-6, rtol=0)


def test_augment_views_runs_the_pipeline_in_torchvision_order(images):
    """jitter -> grayscale -> blur -> solarize -> normalise, each view its own draws."""
    views = images.clone().contiguous()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    order = np.array([[2, 0, 3, 1], [-1] * 4, [1, 3, -1, -1]], dtype=np.int8)
    factors = np.array([[1.2, 0.8, 1.3, -0.06], [1, 1, 1, 0], [1, 1.5, 1, 0.1]], np.float32)
    gray = np.array([False, True, False])
    solarize = np.array([True, False, True])
    taps, radii = fast.blur_taps(9, [0.7, 1.0, 1.9])
    radius = np.array([radii[0], -1, radii[2]], dtype=np.int32)
    weights = np.asarray(taps, dtype=np.float32)
    kernels.augment_views_(
        views.numpy(), order, factors, gray, weights, radius, solarize,
        np.asarray(mean, np.float32), 1 / np.asarray(std, np.float32),
    )  # fmt: skip
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for i, image in enumerate(images):
        expected = image
        for op in order[i]:
            if op >= 0:
                expected = fns[op](expected, float(factors[i, op]))
        if gray[i]:
            expected = F.rgb_to_grayscale(expected, 3)
        if radius[i] >= 0:
            expected = F.gaussian_blur(expected, [9, 9], [[0.7, 1.0, 1.9][i]] * 2)
        if solarize[i]:
            expected = F.solarize(expected, 128 / 255)
        expected = F.normalize(expected, mean, std)
        torch.testing.assert_close(views[i], expected, atol=1e-4, rtol=0)


def _numpy_blur(x: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    r = kernel // 2
    w = np.exp(-0.5 * ((np.arange(kernel) - r) / sigma) ** 2)
    w /= w.sum()
    p = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    size = x.shape[-1]
    rows = sum(w[t] * p[..., :, t : t + size] for t in range(kernel))
    return sum(w[t] * rows[..., t : t + size, :] for t in range(kernel)).astype(np.float32)


def test_crop_boxes_follow_torchvision_fallback():
    # a 1 x 100 strip: no box fits the ratio range, the fallback crops (1 x 1.33) -> (1, 1)
    assert fast.crop_box(1, 100, (0.5, 1.0), [0.5] * fast.BOX_DRAWS) == (0, 49, 1, 1)
    assert fast.crop_box(100, 2, (0.9, 1.0), [0.99] * fast.BOX_DRAWS) == (48, 0, 3, 2)
    top, left, h, w = fast.crop_box(50, 60, (1.0, 1.0), [0.5] * fast.BOX_DRAWS)
    assert (h, w) == (50, 60) or (top, left, h, w) == (0, 0, 50, 60)


def test_decode_reduction_rule():
    dino = MultiCropTransform()  # 224 px at scale >= 0.4, 96 px at scale >= 0.05
    assert dino.max_decode_reduction(512, 512) == 1
    assert dino.max_decode_reduction(500, 375) == 1
    assert dino.max_decode_reduction(1024, 1024) == 2
    assert dino.max_decode_reduction(2048, 2048) == 4
    assert dino.max_decode_reduction(8000, 8000) == 8
    assert dino.max_decode_reduction(4000, 300) == 1  # the short side limits the fallback
    byol = MultiCropTransform(n_local=0, global_scale=(0.08, 1.0))
    assert byol.max_decode_reduction(2048, 2048) == 2  # sqrt(0.08 * 0.75) * 2048 = 501 px
    for w, h in ((1024, 1024), (3000, 2000), (640, 480)):
        k = dino.max_decode_reduction(w, h)
        for size, scale in ((224, 0.4), (96, 0.05)):
            assert min_crop_side(w // k, h // k, scale) >= size * (1 - 1e-9) or k == 1
    assert EvalTransform(224).max_decode_reduction(1200, 1100) == 4  # 1100 / 4 >= 256


def ramp_jpeg(path, width=768, height=512):
    """Red = column, green = row, as fractions of the image (8 bits), 4:4:4 JPEG."""
    x = np.round(np.linspace(0, 255, width))[None, :].repeat(height, 0)
    y = np.round(np.linspace(0, 255, height))[:, None].repeat(width, 1)
    array = np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(array).save(path, quality=95, subsampling=0)


def box_stats(crop: torch.Tensor) -> tuple[float, float]:
    """(area fraction, log aspect in image pixels) of the box a ramp crop came from."""
    crop = crop.float() * (255 if crop.max() <= 1.0 else 1)
    size = crop.shape[-1]
    a, b = 3, size - 4
    width = float(crop[0, size // 2, b] - crop[0, size // 2, a]) / 255 * size / (b - a)
    height = float(crop[1, b, size // 2] - crop[1, a, size // 2]) / 255 * size / (b - a)
    return width * height, math.log((width * 768) / (height * 512))


def ks_statistic(a, b) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, "right") / len(a)
                - np.searchsorted(b, grid, "right") / len(b)
            )
        )
    )


def test_fast_path_crop_statistics_match_the_straightforward_pipeline(tmp_path):
    path = tmp_path / "ramp.jpg"
    ramp_jpeg(path)
    kinds = {"global": (64, (0.4, 1.0)), "local": (32, (0.05, 0.4))}
    transform = MultiCropTransform(
        global_size=64, local_size=32, n_global=2, n_local=4,
        global_scale=kinds["global"][1], local_scale=kinds["local"][1], **NO_AUGMENT, **IDENTITY,
    )  # fmt: skip
    assert transform.max_decode_reduction(768, 512) == 2
    assert load_image(path, reduction=transform.max_decode_reduction).shape == (3, 256, 384)
    reference = {
        kind: T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
        for kind, (size, scale) in kinds.items()
    }
    torch.manual_seed(0)
    ours = {"global": [], "local": []}
    theirs = {"global": [], "local": []}
    for _ in range(120):
        out = transform(load_image(path, reduction=transform.max_decode_reduction))
        ours["global"] += [box_stats(c) for c in out["global_crops"]]
        ours["local"] += [box_stats(c) for c in out["local_crops"]]
        image = Image.open(path).convert("RGB")  # full decode, PIL, torchvision v1
        theirs["global"] += [
            box_stats(T.functional.pil_to_tensor(reference["global"](image))) for _ in range(2)
        ]
        theirs["local"] += [
            box_stats(T.functional.pil_to_tensor(reference["local"](image))) for _ in range(4)
        ]
    for kind, (_, (low, high)) in kinds.items():
        area_ours, aspect_ours = np.array(ours[kind]).T
        area_ref, aspect_ref = np.array(theirs[kind]).T
        assert low - 0.03 <= area_ours.min() and area_ours.max() <= high + 0.03, kind
        assert abs(area_ours.mean() - area_ref.mean()) < 0.03, kind
        assert abs(aspect_ours.mean() - aspect_ref.mean()) < 0.04, kind
        assert abs(aspect_ours.std() - aspect_ref.std()) < 0.03, kind
        assert ks_statistic(area_ours, area_ref) < 0.15, kind
        assert ks_statistic(aspect_ours, aspect_ref) < 0.15, kind
        # aspect ratios of the boxes stay within torchvision's [3/4, 4/3] (+ rounding)
        assert np.abs(aspect_ours).max() < math.log(4 / 3) + 0.08, kind


def test_views_and_single_view_api(images):
    transform = MultiCropTransform(global_size=24, local_size=12, n_local=3)
    image = (images[0] * 255).to(torch.uint8)
    out = transform(image)
    assert [c.shape for c in out["global_crops"]] == [(3, 24, 24)] * 2
    assert [c.shape for c in out["local_crops"]] == [(3, 12, 12)] * 3
    assert transform.global_transforms[1](image).shape == (3, 24, 24)
    assert transform.local_transform(image).shape == (3, 12, 12)
    import pickle

    clone = pickle.loads(pickle.dumps(transform))  # DataLoader workers get a copy
    assert clone(image)["global_crops"][0].shape == (3, 24, 24)
