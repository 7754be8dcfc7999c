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

from ssl_zoo.data import transforms as fast
from ssl_zoo.data.images import load_image
from ssl_zoo.data.transforms import EvalTransform, MultiCropTransform, min_crop_side
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


@pytest.mark.parametrize("factors", [(0.0, 0.6, 1.0), (1.4, 0.9, 1.1)])
def test_jitter_ops_match_torchvision(images, factors):
    ws = fast.Workspace(40, 3)
    for op, reference in (
        (fast._brightness_, F.adjust_brightness),
        (fast._contrast_, F.adjust_contrast),
        (fast._saturation_, F.adjust_saturation),
    ):
        ours = images.clone()
        op(ours, torch.tensor(factors), ws)  # one factor per view, in one batch
        for i, (view, image, factor) in enumerate(zip(ours, images, factors, strict=True)):
            torch.testing.assert_close(view, reference(image, factor), atol=2e-6, rtol=0)
            single = images[i : i + 1].clone()
            op(single, float(factor), ws)  # one view, a Python factor
            torch.testing.assert_close(single[0], view, atol=2e-6, rtol=0)


def test_jitter_ops_skip_no_clamp_that_matters():
    # Factors <= 1 skip the clamp (the result lies between the input and the gray mean
    # or gray image); extreme images must still stay in [0, 1] and match torchvision.
    g = torch.Generator().manual_seed(1)
    extremes = torch.stack(
        [torch.ones(3, 16, 16), torch.zeros(3, 16, 16), torch.rand(3, 16, 16, generator=g)]
    )
    extremes[2, :, :8] = 1.0
    ws = fast.Workspace(16, 1)
    for op, reference in (
        (fast._brightness_, F.adjust_brightness),
        (fast._contrast_, F.adjust_contrast),
        (fast._saturation_, F.adjust_saturation),
    ):
        for factor in (0.0, 0.1, 0.3, 0.49, 0.5, 0.77, 0.999999, 1.0):
            for image in extremes:
                ours = image[None].clone()
                op(ours, factor, ws)
                assert 0.0 <= ours.min() and ours.max() <= 1.0, (op.__name__, factor)
                torch.testing.assert_close(ours[0], reference(image, factor), atol=2e-6, rtol=0)


@pytest.mark.parametrize("factors", [(-0.5, -0.1, -0.013), (0.0, 0.05, 0.1), (0.37, 0.5, -0.25)])
def test_hue_matches_torchvision(images, factors):
    ours, ws = images.clone(), fast.Workspace(40, 3)
    fast._hue_(ours, torch.tensor(factors), ws)
    for i, (view, image, factor) in enumerate(zip(ours, images, factors, strict=True)):
        torch.testing.assert_close(view, F.adjust_hue(image, factor), atol=2e-5, rtol=0)
        single = images[i : i + 1].clone()
        fast._hue_(single, float(factor), ws)
        torch.testing.assert_close(single[0], view, atol=1e-6, rtol=0)


def test_grayscale_solarize_blur_match_torchvision(images):
    ws = fast.Workspace(40, 3)
    gray = fast._grayscale(images, ws)
    solarized = images.clone()
    fast._solarize_(solarized, 128 / 255, ws)
    for i, image in enumerate(images):
        torch.testing.assert_close(gray[i], F.rgb_to_grayscale(image), atol=1e-6, rtol=0)
        torch.testing.assert_close(solarized[i], F.solarize(image, 128 / 255), atol=1e-6, rtol=0)
    for size in (2, 3, 5, 16, 40, 200):  # dense and blocked products, tiny crops
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

    clone = pickle.loads(pickle.dumps(transform))  # workers get a copy, without scratch memory
    assert clone._workspaces == {} and clone(image)["global_crops"][0].shape == (3, 24, 24)
