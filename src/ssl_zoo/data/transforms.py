"""Multi-crop augmentation (DINO, DINOv2, BYOL) and the evaluation transform.

Everything runs on uint8 (3, H, W) tensors with torchvision.transforms.v2: a PIL image is
converted once at the start, and the crop is converted to float and normalised once at
the end. The randomness comes from torch's global generator, which the DataLoader seeds
differently in every worker.

Recipes (the defaults of MultiCropTransform are DINO's):

- DINO (Caron et al. 2021, ViT-S/16 recipe): 2 global crops of 224 px with scale
  (0.4, 1), 8 local crops of 96 px with scale (0.05, 0.4); flip 0.5; colour jitter
  (0.4, 0.4, 0.2, 0.1) with p=0.8; grayscale 0.2; Gaussian blur sigma in (0.1, 2) with
  p=1.0 on the first global view, 0.1 on the second and 0.5 on locals; solarisation 0.2
  on the second global view only. The per-view asymmetry of blur and solarisation comes
  from BYOL (Grill et al. 2020, Table 6).
- BYOL: n_local=0, global_scale=(0.08, 1.0); everything else as above.
- DINOv2 (Oquab et al. 2023): global_scale=(0.32, 1.0), local_scale=(0.05, 0.32),
  local_size=98; everything else as above.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = InterpolationMode.BICUBIC  # DINO uses bicubic crops and resizes


def blur_kernel_size(crop_size: int) -> int:
    """The odd kernel size nearest to 10% of the crop side (BYOL: 23 px at 224), >= 3."""
    return max(3, 2 * round((0.1 * crop_size - 1) / 2) + 1)


def to_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image or a (C, H, W) uint8 tensor as a plain (3, H, W) uint8 tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL.Image or a uint8 tensor, got {type(image)}")
    image = image.as_subclass(torch.Tensor)  # drop tv_tensors.Image and the like
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"image tensor must be uint8 of shape (3, H, W) or (1, H, W), "
            f"got {image.dtype} {tuple(image.shape)}"
        )
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


# ----------------------------------------------------------------------------- checks


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_size(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value!r}")
    return int(value)


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_prob(name: str, value) -> float:
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_pair(name: str, value) -> tuple[float, float]:
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if len(pair) != 2 or not all(_is_real(x) for x in pair):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {value!r}")
    return float(pair[0]), float(pair[1])


def _check_scale(name: str, value) -> tuple[float, float]:
    low, high = _check_pair(name, value)
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {value!r}")
    return low, high


def _check_per_view(name: str, value, n_views: int) -> tuple[float, ...]:
    """One probability per global view; a single number applies to all of them."""
    if _is_real(value):
        return (_check_prob(name, value),) * n_views
    try:
        probs = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a probability or a sequence of them") from None
    if len(probs) != n_views:
        raise ValueError(
            f"{name} must have one probability per global view (n_global={n_views}), "
            f"got {len(probs)}: {value!r}"
        )
    return tuple(_check_prob(f"{name}[{i}]", p) for i, p in enumerate(probs))


def _check_channels(name: str, value, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 numbers, got {value!r}") from None
    if len(values) != 3 or not all(_is_real(x) for x in values):
        raise ValueError(f"{name} must be a sequence of 3 numbers, got {value!r}")
    if positive and not all(x > 0 for x in values):
        raise ValueError(f"{name} must be > 0 in every channel, got {value!r}")
    return tuple(float(x) for x in values)


def _to_float_normalized(mean, std) -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


# ------------------------------------------------------------------------- transforms


class MultiCropTransform:
    """Global and local crops of one image, each independently augmented.

    Args:
        global_size, local_size: output side of the global / local crops.
        n_global: number of global crops (>= 1).
        n_local: number of local crops (>= 0).
        global_scale, local_scale: (min, max) area fraction of the RandomResizedCrop box.
        flip_p: horizontal flip probability.
        color_jitter_p: probability of ColorJitter(brightness, contrast, saturation, hue).
        grayscale_p: probability of converting to grayscale (kept as 3 channels).
        global_blur_p: Gaussian blur probability per global view (one per view, or one
            number for all views).
        local_blur_p: Gaussian blur probability of every local view.
        blur_sigma: (min, max) of the blur standard deviation in pixels; the kernel is the
            odd size nearest to 10% of the crop (23 at 224, 9 at 96, 3 at 32).
        global_solarize_p: solarisation probability per global view (like global_blur_p).
        local_solarize_p: solarisation probability of every local view.
        mean, std: per-channel normalisation of the [0, 1] float image.

    Call on a PIL image or a (3, H, W) uint8 tensor; returns
    {"global_crops": [(3, G, G) float32] * n_global, "local_crops": [(3, L, L)] * n_local}.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        flip_p: float = 0.5,
        color_jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        global_blur_p: float | Sequence[float] = (1.0, 0.1),
        local_blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        global_solarize_p: float | Sequence[float] = (0.0, 0.2),
        local_solarize_p: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.global_size = _check_size("global_size", global_size)
        self.local_size = _check_size("local_size", local_size)
        self.n_global = _check_count("n_global", n_global, 1)
        self.n_local = _check_count("n_local", n_local, 0)
        self.global_scale = _check_scale("global_scale", global_scale)
        self.local_scale = _check_scale("local_scale", local_scale)
        self.flip_p = _check_prob("flip_p", flip_p)
        self.color_jitter_p = _check_prob("color_jitter_p", color_jitter_p)
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not _is_real(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not _is_real(hue) or not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be a number in [0, 0.5], got {hue!r}")
        self.jitter = (float(brightness), float(contrast), float(saturation), float(hue))
        self.grayscale_p = _check_prob("grayscale_p", grayscale_p)
        self.global_blur_p = _check_per_view("global_blur_p", global_blur_p, self.n_global)
        self.local_blur_p = _check_prob("local_blur_p", local_blur_p)
        self.blur_sigma = _check_pair("blur_sigma", blur_sigma)
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {blur_sigma!r}")
        self.global_solarize_p = _check_per_view(
            "global_solarize_p", global_solarize_p, self.n_global
        )
        self.local_solarize_p = _check_prob("local_solarize_p", local_solarize_p)
        self.mean = _check_channels("mean", mean, positive=False)
        self.std = _check_channels("std", std, positive=True)

        self.global_transforms = [
            self._view(self.global_size, self.global_scale, blur_p, solarize_p)
            for blur_p, solarize_p in zip(self.global_blur_p, self.global_solarize_p, strict=True)
        ]
        self.local_transform = self._view(
            self.local_size, self.local_scale, self.local_blur_p, self.local_solarize_p
        )

    def _view(
        self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float
    ) -> v2.Compose:
        ops: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=scale, interpolation=_INTERPOLATION, antialias=True)
        ]
        if self.flip_p > 0:
            ops.append(v2.RandomHorizontalFlip(self.flip_p))
        if self.color_jitter_p > 0 and any(self.jitter):
            ops.append(v2.RandomApply([v2.ColorJitter(*self.jitter)], p=self.color_jitter_p))
        if self.grayscale_p > 0:
            ops.append(v2.RandomGrayscale(self.grayscale_p))
        if blur_p > 0:
            blur = v2.GaussianBlur(blur_kernel_size(size), sigma=self.blur_sigma)
            ops.append(v2.RandomApply([blur], p=blur_p))
        if solarize_p > 0:
            ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 threshold
        ops.append(_to_float_normalized(self.mean, self.std))
        return v2.Compose(ops)

    def __call__(self, image: Image.Image | torch.Tensor) -> dict[str, list[torch.Tensor]]:
        image = to_uint8_tensor(image)
        return {
            "global_crops": [t(image) for t in self.global_transforms],
            "local_crops": [self.local_transform(image) for _ in range(self.n_local)],
        }


class EvalTransform:
    """Resize the shorter side to round(size / crop_fraction), centre-crop `size`, normalise.

    With the defaults this is the standard ImageNet evaluation (256 -> 224 centre crop).
    Returns a (3, size, size) float32 tensor.
    """

    def __init__(
        self,
        size: int = 224,
        crop_fraction: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = _check_size("size", size)
        if not _is_real(crop_fraction) or not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
        self.crop_fraction = float(crop_fraction)
        self.mean = _check_channels("mean", mean, positive=False)
        self.std = _check_channels("std", std, positive=True)
        self.resize_size = round(self.size / self.crop_fraction)
        self.transform = v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=_INTERPOLATION, antialias=True),
                v2.CenterCrop(self.size),
                _to_float_normalized(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.transform(to_uint8_tensor(image))
