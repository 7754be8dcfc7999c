"""Multi-crop augmentation (DINO, DINOv2, BYOL) and the evaluation transform.

The randomness comes from torch's global generator, which the DataLoader seeds
differently in every worker.

Recipes (the defaults of MultiCropTransform are DINO's):

- DINO (Caron et al. 2021, ViT-S/16 recipe): 2 global crops of 224 px with scale
  (0.4, 1), 8 local crops of 96 px with scale (0.05, 0.4); flip 0.5; colour jitter
  (0.4, 0.4, 0.2, 0.1) with p=0.8; grayscale 0.2; Gaussian blur sigma in (0.1, 2) with
  p=1.0 on the first global view, 0.1 on the second and 0.5 on locals; solarisation 0.2
  on the second global view only. The per-view asymmetry of blur and solarisation comes
  from BYOL (Grill et al. 2020, Table 6).
- BYOL: n_local=0, global_scale=(0.08, 1.0); everything else as above.
- DINOv2 (Oquab et al. 2023): global_scale=(0.32, 1.0), local_scale=(0.05, 0.32);
  its code blurs the global views with p 0.0 and 0.9 (not 1.0 and 0.1: RandomApply gets
  1 - p), which conf/augmentation/dinov2.yaml follows (switch: augmentation.dinov2_blur).

The blur's kernel differs between the references: ``blur_kernel`` picks one (DINO: PIL's
GaussianBlur, "pil"; DINOv2: 9 taps at every size; BYOL: side / 10 taps, zero padding,
"byol"; "tenth_of_crop", the default, the odd size nearest to 10% of the side with
reflect padding, BYOL's 23 taps at 224 px but not at every size).
``draw_sample`` draws every random choice of a sample's views (``ViewOps``) before any
pixel is touched; ``__call__`` renders them (tests measure the statistics there).

How it is fast (the distribution is torchvision's, op by op):

1. Decode small when nothing is lost: ``MultiCropTransform.max_decode_reduction(w, h)``
   tells the image loader (``ssl_zoo.datasets.images``) by how much a JPEG may be decoded
   smaller (PIL draft mode: 1/2, 1/4, 1/8 in the DCT). A crop box of area fraction s and
   aspect ratio r (width / height) on a W x H image has sides sqrt(s r W H) and
   sqrt(s W H / r); over s >= s_min and r in [3/4, 4/3] its smaller side is at least
   m = min(sqrt(s_min * 3/4 * W * H), min(W, H)) (the second term covers the centre-crop
   fallback of RandomResizedCrop). Decoding at 1/k is harmless when every box still has
   >= G pixels per side at 1/k, i.e. k <= m / G, for every crop kind (G, s_min): the
   resize then still downsamples. Boxes are drawn in relative terms on the decoded image,
   so the crop statistics (scale, aspect, position) stay the same. Example: DINO (224 px
   at s >= 0.4, 96 px at s >= 0.05) allows k = 2 from a square side of ~1000 px; a 500 px
   photo is decoded in full.
2. Crop boxes follow ``torchvision.transforms.v2.RandomResizedCrop`` (10 tries, then
   the centre-crop fallback), with the random numbers of all views drawn at once. Each box
   is packed channels-last and resized on uint8 by torch's native antialiased bicubic
   kernel (torchvision's resized_crop on uint8 tensors uses the same kernel).
3. The views of one size are stacked and converted to float32 in [0, 1] once. The float
   ops then run as compiled loops (``ssl_zoo.data.kernels``, numba), one call for all the
   views of a size: per view, colour jitter with its own factors and its own random order
   of the four ops (as ColorJitter), grayscale, blur, solarisation and normalisation,
   each op one pass over the view's pixels. (Written as torch elementwise ops, every
   arithmetic step is a pass over memory and a dispatch: a hue rotation takes ~35, which
   made the colour ops most of a sample's time.) Hue rotates HSV hue without building HSV;
   the Gaussian blur is separable with reflect padding and skips the taps that are 0.
   Unlike torchvision on uint8, values are not rounded to 8 bits between ops (differences
   below 1/255 per op); tests check every op against torchvision's on float images.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode, v2

from ssl_zoo.data import kernels
from ssl_zoo.datasets.images import pil_rgb_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = InterpolationMode.BICUBIC  # DINO uses bicubic crops and resizes
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range (width / height)
DECODE_REDUCTIONS = (8, 4, 2, 1)  # what a JPEG decoder can do in the DCT (PIL draft)


def blur_kernel_size(crop_size: int) -> int:
    """The odd kernel size nearest to 10% of the crop side (BYOL: 23 px at 224), >= 3."""
    return max(3, 2 * round((0.1 * crop_size - 1) / 2) + 1)


def byol_blur_kernel_size(crop_size: int) -> int:
    """BYOL's reference rule (deepmind-research byol/utils/augmentations.py:423 and
    135-136): kernel_size = side / 10, radius int(kernel_size / 2), 2 * radius + 1 taps.
    23 at 224 like blur_kernel_size, but not at every side (11 vs 9 at 100, 1 vs 3 at 16)."""
    return 2 * int(crop_size / 10.0 / 2) + 1


# MultiCropTransform's blur_kernel, by name (an odd int is a fixed kernel, reflect padding).
BLUR_KERNELS = {
    "tenth_of_crop": "odd size nearest to 10% of the crop, >= 3, reflect padding (ssl_zoo's default)",
    "byol": "BYOL's 2 * int(side / 20) + 1 taps, zero padding (jax 'SAME' convolution)",
    "pil": "PIL ImageFilter.GaussianBlur(radius=sigma) on the view rounded to 8 bits (DINO)",
}


def pil_gaussian_blur_(view: np.ndarray, sigma: float) -> None:
    """Blur a (3, S, S) float32 view in [0, 1] in place with PIL's GaussianBlur (DINO's
    utils.GaussianBlur: radius = sigma, PIL's own extent: three box blurs). PIL works on
    8 bits, as DINO's PIL pipeline does there: the view is rounded to 8 bits first."""
    pixels = np.clip(view * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0)
    blurred = Image.fromarray(np.ascontiguousarray(pixels)).filter(ImageFilter.GaussianBlur(sigma))
    view[...] = np.asarray(blurred, dtype=np.float32).transpose(2, 0, 1) * np.float32(1.0 / 255.0)


def to_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image or a (C, H, W) uint8 tensor as a plain (3, H, W) uint8 tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return pil_rgb_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL.Image or a uint8 tensor, got {type(image)}")
    image = image.as_subclass(torch.Tensor)  # drop tv_tensors.Image and the like
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"image tensor must be uint8 of shape (3, H, W) or (1, H, W), "
            f"got {image.dtype} {tuple(image.shape)}"
        )
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def min_crop_side(
    width: int, height: int, min_scale: float, ratio: Sequence[float] = CROP_RATIO
) -> float:
    """Lower bound on the smaller side (pixels) of any RandomResizedCrop box on a
    width x height image with area fraction >= min_scale (see the module docstring)."""
    area = width * height * min_scale
    return min(math.sqrt(area * ratio[0]), math.sqrt(area / ratio[1]), width, height)


def max_reduction(min_side_per_size: Sequence[tuple[float, int]]) -> int:
    """Largest k in DECODE_REDUCTIONS with min_side / k >= size for every (min_side, size)."""
    limit = min(side / size for side, size in min_side_per_size)
    return next((k for k in DECODE_REDUCTIONS if k <= limit), 1)


BOX_DRAWS = 22  # random numbers per crop box: 10 tries x (scale, ratio) + (top, left)


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    draws: Sequence[float],
    ratio: Sequence[float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """One box (top, left, box_height, box_width) drawn like
    ``torchvision.transforms.v2.RandomResizedCrop`` from BOX_DRAWS uniform numbers in
    [0, 1): up to 10 tries of an area fraction uniform in ``scale`` and an aspect ratio
    log-uniform in ``ratio``, a position uniform over the valid ones, else the centre
    crop clamped to the ratio range (torchvision's fallback)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * draws[2 * attempt])
        aspect = math.exp(log_lo + (log_hi - log_lo) * draws[2 * attempt + 1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(draws[20] * (height - h + 1)), height - h)
            left = min(int(draws[21] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """(1, 3, size, size) uint8: the box of a (3, H, W) uint8 image, bicubic, antialiased
    (torchvision's resized_crop; channels-last input takes torch's native uint8 kernel)."""
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w].unsqueeze(0)
    if (h, w) == (size, size):
        return crop
    # A box of a channels-last image is not channels-last contiguous (its rows are the
    # image's); packing it first is cheaper than what interpolate does otherwise (~1.5x).
    crop = crop.contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(
        crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )


# ------------------------------------------------------------ float ops on (N, 3, S, S)
# The ops themselves are the numba kernels of ``ssl_zoo.data.kernels``.


def blur_taps(kernel_size: int, sigma: Sequence[float]) -> tuple[list[list[float]], list[int]]:
    """Normalised Gaussian taps per sigma (torchvision's kernel) and, per sigma, the
    radius beyond which its taps are 0. Far taps of a narrow kernel are tiny: their
    products would be denormal floats, ~10x slower on x86; below 1e-10 a weight changes
    nothing, so they are zeroed, and the blur skips them (sigma 0.5 needs 3 of 11)."""
    radius = kernel_size // 2
    rows, radii = [], []
    for s in sigma:
        w = [math.exp(-0.5 * ((t - radius) / s) ** 2) for t in range(kernel_size)]
        total = sum(w)
        rows.append([v / total if v / total >= 1e-10 else 0.0 for v in w])
        radii.append(max(abs(t - radius) for t, v in enumerate(rows[-1]) if v > 0.0))
    return rows, radii


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: Sequence[float]) -> torch.Tensor:
    """Blurred copy of (N, 3, S, S) float32 images, one sigma per image (N,), like
    torchvision's gaussian_blur (reflect padding, kernel_size taps)."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2] or x.shape[-3] != 3:
        raise ValueError(f"gaussian_blur expects (N, 3, S, S) images, got {tuple(x.shape)}")
    size, out = x.shape[-1], x.to(torch.float32, copy=True).contiguous()
    taps, radii = blur_taps(kernel_size, sigma)
    weights = np.asarray(taps, dtype=np.float32)
    for view, w, radius in zip(out.numpy(), weights, radii, strict=True):
        kernels.blur_(view.reshape(3, size * size), size, w, radius)
    return out


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


def _check_blur_kernel(value) -> int | str:
    if isinstance(value, str) and value in BLUR_KERNELS:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0 and value % 2:
        return int(value)
    names = ", ".join(BLUR_KERNELS)
    raise ValueError(f"blur_kernel must be an odd int > 0 (fixed taps) or one of {names}; got {value!r}")


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
        blur_sigma: (min, max) of the blur standard deviation in pixels.
        blur_kernel: the blur's kernel (each reference has its own): "tenth_of_crop", the
            odd size nearest to 10% of the crop (23 at 224, 9 at 96, 3 at 32), reflect
            padding; "byol", BYOL's reference (2 * int(side / 20) + 1 taps, zero padding);
            "pil", PIL's GaussianBlur with radius sigma (DINO); an odd int, that many taps
            at every crop size, reflect padding (torchvision's GaussianBlur; DINOv2: 9).
        global_solarize_p: solarisation probability per global view (like global_blur_p).
        local_solarize_p: solarisation probability of every local view.
        solarize_threshold: in 8-bit levels; values >= it are inverted (128: torchvision's
            RandomSolarize(128) and PIL's ImageOps.solarize; BYOL's 0.5 on floats is 127.5).
        mean, std: per-channel normalisation of the [0, 1] float image.

    Call on a PIL image or a (3, H, W) uint8 tensor; returns
    {"global_crops": [(3, G, G) float32] * n_global, "local_crops": [(3, L, L)] * n_local}.
    ``global_transforms[i]`` / ``local_transform`` make one view of that kind alone.
    ``max_decode_reduction(width, height)`` is the decode-size hint of the module docstring.
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
        blur_kernel: int | str = "tenth_of_crop",
        solarize_threshold: float = 128.0,
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
        self.blur_kernel = _check_blur_kernel(blur_kernel)
        if not _is_real(solarize_threshold) or not 0 <= solarize_threshold <= 256:
            raise ValueError(
                f"solarize_threshold must be a number of 8-bit levels in [0, 256], got {solarize_threshold!r}"
            )
        self.solarize_threshold = float(solarize_threshold)
        self.mean = _check_channels("mean", mean, positive=False)
        self.std = _check_channels("std", std, positive=True)

        # ColorJitter's factor ranges, torchvision's: (max(0, 1 - v), 1 + v), hue (-h, h);
        # a zero strength switches the op off.
        b, c, s, h = self.jitter
        self._jitter_ranges = tuple(
            (lo, hi) if strength > 0 else None
            for strength, (lo, hi) in (
                (b, (max(0.0, 1 - b), 1 + b)),
                (c, (max(0.0, 1 - c), 1 + c)),
                (s, (max(0.0, 1 - s), 1 + s)),
                (h, (-h, h)),
            )
        )
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(self.std, dtype=np.float32)
        self.global_transforms = [
            _CropView(self, self.global_size, self.global_scale, blur_p, solarize_p)
            for blur_p, solarize_p in zip(self.global_blur_p, self.global_solarize_p, strict=True)
        ]
        self.local_transform = _CropView(
            self, self.local_size, self.local_scale, self.local_blur_p, self.local_solarize_p
        )
        kernels.warm_up()  # before DataLoader workers fork: they inherit the compiled code

    def max_decode_reduction(self, width: int, height: int) -> int:
        """Largest factor (8, 4, 2 or 1) by which a width x height image may be decoded
        smaller while every crop box keeps at least its output size in pixels."""
        kinds = [(self.global_size, self.global_scale[0])]
        if self.n_local > 0:
            kinds.append((self.local_size, self.local_scale[0]))
        return max_reduction([(min_crop_side(width, height, s), size) for size, s in kinds])

    def __call__(self, image: Image.Image | torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return self.render(to_uint8_tensor(image), self.draw_sample())

    def draw_sample(self) -> dict[str, list[ViewOps]]:
        """The random choices of one sample's views, before any pixel is touched:
        {"global_crops": [ViewOps] * n_global, "local_crops": [ViewOps] * n_local}.
        ``__call__`` renders exactly these (tests measure the augmentation statistics here)."""
        local_ops = []
        global_ops = self.draw_ops(self.global_blur_p, self.global_solarize_p)
        if self.n_local > 0:
            n = self.n_local
            local_ops = self.draw_ops((self.local_blur_p,) * n, (self.local_solarize_p,) * n)
        return {"global_crops": global_ops, "local_crops": local_ops}

    def render(
        self, image: torch.Tensor, sample: dict[str, list[ViewOps]]
    ) -> dict[str, list[torch.Tensor]]:
        """The views of ``draw_sample`` cut from a (3, H, W) uint8 image."""
        global_crops = self.render_views(
            image, self.global_size, self.global_scale, sample["global_crops"]
        )
        local_crops = []
        if sample["local_crops"]:
            local_crops = self.render_views(
                image, self.local_size, self.local_scale, sample["local_crops"]
            ).unbind(0)
        return {"global_crops": list(global_crops.unbind(0)), "local_crops": list(local_crops)}

    def crops(
        self,
        image: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        blur_p: Sequence[float],
        solarize_p: Sequence[float],
    ) -> torch.Tensor:
        """len(blur_p) augmented, normalised (N, 3, size, size) crops of a (3, H, W) uint8
        image; view i is blurred with probability blur_p[i], solarised with solarize_p[i]."""
        return self.render_views(image, size, scale, self.draw_ops(blur_p, solarize_p))

    def draw_ops(self, blur_p: Sequence[float], solarize_p: Sequence[float]) -> list[ViewOps]:
        """The random choices of len(blur_p) views; view i is blurred with probability
        blur_p[i], solarised with solarize_p[i]."""
        # One draw for all the randomness of the n views: the box, then flip, jitter,
        # gray, blur, sigma, solarise coins, four jitter factors and four keys whose
        # argsort is the order of the jitter ops.
        draws = torch.rand(len(blur_p), BOX_DRAWS + 14, dtype=torch.float64).tolist()
        lo, hi = self.blur_sigma
        views = []
        for d, view_blur_p, view_solarize_p in zip(draws, blur_p, solarize_p, strict=True):
            coins = d[BOX_DRAWS:]
            jitter_order, factors = (), [0.0] * 4
            if coins[1] < self.color_jitter_p:
                # Each view its own factors and its own order of the four ops (ColorJitter).
                order = sorted(range(4), key=d[-4:].__getitem__)
                jitter_order = tuple(op for op in order if self._jitter_ranges[op] is not None)
                for op in jitter_order:
                    low, high = self._jitter_ranges[op]
                    factors[op] = low + (high - low) * coins[6 + op]
            views.append(
                ViewOps(
                    box_draws=tuple(d[:BOX_DRAWS]),
                    flip=coins[0] < self.flip_p,
                    jitter_order=jitter_order,
                    jitter_factors=tuple(factors),
                    gray=coins[2] < self.grayscale_p,
                    blur_sigma=lo + (hi - lo) * coins[4] if coins[3] < view_blur_p else None,
                    solarize=coins[5] < view_solarize_p,
                )
            )
        return views

    def _blur_kernel_at(self, size: int) -> tuple[int, bool]:
        """(taps, zero padding) of the Gaussian blur at this crop side (not for "pil")."""
        if self.blur_kernel == "tenth_of_crop":
            return blur_kernel_size(size), False
        if self.blur_kernel == "byol":
            return byol_blur_kernel_size(size), True
        return self.blur_kernel, False

    def render_views(
        self, image: torch.Tensor, size: int, scale: tuple[float, float], views: Sequence[ViewOps]
    ) -> torch.Tensor:
        """(N, 3, size, size) normalised crops of a (3, H, W) uint8 image, view i made as
        ``views[i]`` says."""
        n = len(views)
        _, height, width = image.shape
        x = torch.empty(n, 3, size, size)
        for i, view in enumerate(views):
            crop = resized_crop(image, crop_box(height, width, scale, view.box_draws), size)[0]
            if view.flip:
                crop = crop.flip(-1)
            x[i].copy_(crop)  # uint8 -> float (scaled below, in one op for all views)
        x.mul_(1.0 / 255.0)

        # Colour jitter, grayscale, blur, solarise and normalisation, all in one compiled
        # pass over the views.
        jitter_order = np.full((n, 4), -1, dtype=np.int8)
        jitter_factors = np.zeros((n, 4), dtype=np.float32)
        gray = np.array([view.gray for view in views], dtype=np.bool_)
        solarize = np.array([view.solarize for view in views], dtype=np.bool_)
        blur_radius = np.full(n, -1, dtype=np.int32)
        pil = self.blur_kernel == "pil"
        kernel, zero_pad = (1, False) if pil else self._blur_kernel_at(size)
        blur_weights = np.zeros((n, kernel), dtype=np.float32)
        for i, view in enumerate(views):
            jitter_order[i, : len(view.jitter_order)] = view.jitter_order
            jitter_factors[i] = view.jitter_factors
            if view.blur_sigma is not None and not pil:
                taps, radii = blur_taps(kernel, [view.blur_sigma])
                blur_weights[i], blur_radius[i] = taps[0], radii[0]
        threshold = self.solarize_threshold / 255.0
        if not pil:
            kernels.augment_views_(
                x.numpy(), jitter_order, jitter_factors, gray, blur_weights, blur_radius,
                solarize, self._mean, self._inv_std, threshold, zero_pad,
            )  # fmt: skip
            return x
        # PIL's blur between two compiled passes: jitter and grayscale, then (after the
        # blur) solarisation and normalisation.
        no = np.zeros(n, dtype=np.bool_)
        identity = (np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32))
        kernels.augment_views_(
            x.numpy(), jitter_order, jitter_factors, gray, blur_weights, blur_radius,
            no, *identity, threshold, False,
        )  # fmt: skip
        for view, pixels in zip(views, x.numpy(), strict=True):
            if view.blur_sigma is not None:
                pil_gaussian_blur_(pixels, view.blur_sigma)
        jitter_order[:] = -1
        kernels.augment_views_(
            x.numpy(), jitter_order, jitter_factors, no, blur_weights, blur_radius,
            solarize, self._mean, self._inv_std, threshold, False,
        )  # fmt: skip
        return x


@dataclass(frozen=True)
class ViewOps:
    """The random choices of one view, drawn before any pixel is touched.

    box_draws: BOX_DRAWS uniform numbers for ``crop_box``; flip: horizontal flip;
    jitter_order: ColorJitter's op ids (kernels.BRIGHTNESS, ...) in the order applied, ()
    for no colour jitter; jitter_factors: the factor of each op id (4); gray: grayscale;
    blur_sigma: the blur's sigma in pixels, None for no blur; solarize: solarisation.
    """

    box_draws: tuple[float, ...]
    flip: bool
    jitter_order: tuple[int, ...]
    jitter_factors: tuple[float, ...]
    gray: bool
    blur_sigma: float | None
    solarize: bool


class _CropView:
    """One kind of view of a MultiCropTransform (the same pipeline, one crop)."""

    def __init__(
        self, owner: MultiCropTransform, size: int, scale, blur_p: float, solarize_p: float
    ):
        self.owner, self.size, self.scale = owner, size, scale
        self.blur_p, self.solarize_p = blur_p, solarize_p

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        image = to_uint8_tensor(image)
        return self.owner.crops(image, self.size, self.scale, (self.blur_p,), (self.solarize_p,))[0]

    def __repr__(self) -> str:
        return f"_CropView(size={self.size}, scale={self.scale}, blur_p={self.blur_p}, solarize_p={self.solarize_p})"


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

    def max_decode_reduction(self, width: int, height: int) -> int:
        """Largest decode factor keeping the shorter side >= the resize target."""
        return max_reduction([(min(width, height), self.resize_size)])

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.transform(to_uint8_tensor(image))
