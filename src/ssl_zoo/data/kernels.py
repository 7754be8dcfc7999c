"""Fused per-view augmentation kernels (numba), the float half of the fast multi-crop path.

Each op is one loop over the pixels of one view, compiled to vector code: torch's
elementwise ops make a pass over memory (and a dispatch of a few microseconds) per
arithmetic step, ~35 of them for a hue rotation alone, which made the colour ops most of
the time of a multi-crop sample. Here a hue rotation is one pass: 18 instead of 224 us
on a 96 px view, 71-174 instead of 480 us on a 224 px one (2-core machine, one thread).

Arrays are numpy views of float32 torch tensors (``tensor.numpy()`` shares memory). A view
is (3, P): its three channel planes of P = H * W pixels, values in [0, 1]. Every op matches
``torchvision.transforms.v2.functional`` on float images (the tests check them one by
one); ``augment_views_`` runs a sample's views through them in the order of
torchvision's pipeline.

Compiled once per process by ``warm_up`` (MultiCropTransform calls it when built, so
forked DataLoader workers inherit the code) and cached next to this file (numba's
``cache=True``; a read-only install falls back to numba's user cache directory).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# torchvision's rgb_to_grayscale weights
_WR, _WG, _WB = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)

# Op ids of ColorJitter's four ops, in torchvision's order (the ids index factors).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

_JIT = {"cache": True, "nogil": True, "boundscheck": False}


@njit(**_JIT)
def _clamp01(value):
    return min(max(value, _ZERO), _ONE)


@njit(**_JIT)
def brightness_(view, factor):
    """x -> clamp(f x, 0, 1) (torchvision adjust_brightness)."""
    f = np.float32(factor)
    for c in range(3):
        plane = view[c]
        for j in range(plane.shape[0]):
            plane[j] = _clamp01(plane[j] * f)


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, **_JIT)
def gray_mean(view):
    """Mean of the grayscale image (reassociated: summed in vector lanes, then added)."""
    r, g, b = view[0], view[1], view[2]
    total = 0.0
    for j in range(r.shape[0]):
        total += _WR * r[j] + _WG * g[j] + _WB * b[j]
    return np.float32(total / r.shape[0])


@njit(**_JIT)
def contrast_(view, factor):
    """x -> clamp(f x + (1 - f) mean(gray(x)), 0, 1) (torchvision adjust_contrast)."""
    f = np.float32(factor)
    offset = gray_mean(view) * (_ONE - f)
    for c in range(3):
        plane = view[c]
        for j in range(plane.shape[0]):
            plane[j] = _clamp01(f * plane[j] + offset)


@njit(**_JIT)
def saturation_(view, factor):
    """x -> clamp(f x + (1 - f) gray(x), 0, 1) per pixel (torchvision adjust_saturation)."""
    f = np.float32(factor)
    w = _ONE - f
    r, g, b = view[0], view[1], view[2]
    for j in range(r.shape[0]):
        gray = (_WR * r[j] + _WG * g[j] + _WB * b[j]) * w
        r[j] = _clamp01(f * r[j] + gray)
        g[j] = _clamp01(f * g[j] + gray)
        b[j] = _clamp01(f * b[j] + gray)


@njit(**_JIT)
def _hsv_channel(value, chroma, hue6, centre):
    # HSV -> RGB for one channel, branch-free: V - C * clamp(||H6 - p| - 3| - 1, 0, 1)
    # with p = 3, 5, 1 for r, g, b (the usual (n + H6) mod 6 formula, folded).
    t = abs(abs(hue6 - centre) - np.float32(3.0)) - _ONE
    return value - chroma * _clamp01(t)


@njit(**_JIT)
def hue_(view, factor):
    """Rotate the HSV hue by ``factor`` turns (torchvision adjust_hue: RGB -> HSV, add,
    mod 1, HSV -> RGB), without building HSV. H6 is the hue in sixths of a turn, picked by
    torchvision's rule: from r if r is the max, else g, else b."""
    shift = np.float32(6.0 * factor)
    r, g, b = view[0], view[1], view[2]
    six, sixth = np.float32(6.0), np.float32(1.0 / 6.0)
    for j in range(r.shape[0]):
        red, green, blue = r[j], g[j], b[j]
        value = max(max(red, green), blue)
        chroma = value - min(min(red, green), blue)
        inv = _ONE / max(chroma, np.float32(1e-12))  # chroma 0: every channel is V
        hue6 = (red - green) * inv + np.float32(4.0)
        hue6 = (blue - red) * inv + np.float32(2.0) if green == value else hue6
        hue6 = (green - blue) * inv if red == value else hue6
        hue6 += shift
        hue6 -= six * np.floor(hue6 * sixth)  # into [0, 6)
        r[j] = _hsv_channel(value, chroma, hue6, np.float32(3.0))
        g[j] = _hsv_channel(value, chroma, hue6, np.float32(5.0))
        b[j] = _hsv_channel(value, chroma, hue6, _ONE)


@njit(**_JIT)
def color_jitter_(view, order, factors):
    """ColorJitter with drawn factors: the ops ``order`` (op ids; -1 skips) in that order,
    op k with ``factors[k]``."""
    for op in order:
        if op == BRIGHTNESS:
            brightness_(view, factors[op])
        elif op == CONTRAST:
            contrast_(view, factors[op])
        elif op == SATURATION:
            saturation_(view, factors[op])
        elif op == HUE:
            hue_(view, factors[op])


@njit(**_JIT)
def to_gray_(view):
    """Grayscale kept as 3 equal channels (torchvision rgb_to_grayscale, 3 outputs)."""
    r, g, b = view[0], view[1], view[2]
    for j in range(r.shape[0]):
        gray = _WR * r[j] + _WG * g[j] + _WB * b[j]
        r[j] = gray
        g[j] = gray
        b[j] = gray


@njit(**_JIT)
def solarize_(view, threshold):
    """v -> 1 - v where v >= threshold (torchvision solarize)."""
    t = np.float32(threshold)
    for c in range(3):
        plane = view[c]
        for j in range(plane.shape[0]):
            v = plane[j]
            plane[j] = _ONE - v if v >= t else v


@njit(**_JIT)
def _reflect(index, size):
    """Index into a line of ``size`` samples with reflect padding (no edge repeat), applied
    as often as needed (numpy's 'reflect' for pads wider than the line)."""
    if size == 1:
        return 0
    period = 2 * (size - 1)
    index %= period
    return period - index if index >= size else index


@njit(**_JIT)
def blur_(view, size, weights, radius, zero_pad=False):
    """Separable Gaussian blur of a (3, size * size) view in place: rows, then columns.
    ``weights`` holds the kernel's taps (odd length, centre in the middle); only the taps
    within ``radius`` of the centre are used (the caller zeroes the negligible far ones).
    Beyond the border: torchvision's reflect padding, or with ``zero_pad`` zeros (a 'SAME'
    convolution, BYOL's reference: the taps outside the image are lost, borders darken).

    The loops index 2-D arrays instead of slicing rows: a slice in numba is a new array
    object (reference counted), which in the inner loops cost more than the arithmetic.
    """
    centre = weights.shape[0] // 2
    n_taps = 2 * radius + 1
    taps = weights[centre - radius : centre + radius + 1]
    width = size + 2 * radius
    padded = np.empty((size, width), dtype=np.float32)  # image rows, reflect-padded
    rows = np.empty((width, size), dtype=np.float32)  # the rows pass, reflect-padded
    acc = np.empty(size, dtype=np.float32)
    image = view.reshape(3, size, size)
    for c in range(3):
        for i in range(size):
            for p in range(radius):
                if zero_pad:
                    padded[i, p] = _ZERO
                    padded[i, radius + size + p] = _ZERO
                else:
                    padded[i, p] = image[c, i, _reflect(p - radius, size)]
                    padded[i, radius + size + p] = image[c, i, _reflect(size + p, size)]
            for j in range(size):
                padded[i, radius + j] = image[c, i, j]
        for i in range(size):  # along the rows
            acc[:] = 0.0
            for t in range(n_taps):
                w = taps[t]
                for j in range(size):
                    acc[j] += w * padded[i, t + j]
            for j in range(size):
                rows[radius + i, j] = acc[j]
        for p in range(radius):  # the padding rows above and below
            above = radius + _reflect(p - radius, size)
            below = radius + _reflect(size + p, size)
            for j in range(size):
                rows[p, j] = _ZERO if zero_pad else rows[above, j]
                rows[radius + size + p, j] = _ZERO if zero_pad else rows[below, j]
        for i in range(size):  # down the columns: whole rows at a time
            acc[:] = 0.0
            for t in range(n_taps):
                w = taps[t]
                for j in range(size):
                    acc[j] += w * rows[i + t, j]
            for j in range(size):
                image[c, i, j] = acc[j]


@njit(**_JIT)
def normalize_(view, mean, inv_std):
    """(x - mean[c]) * inv_std[c] per channel."""
    for c in range(3):
        plane = view[c]
        m, s = np.float32(mean[c]), np.float32(inv_std[c])
        for j in range(plane.shape[0]):
            plane[j] = (plane[j] - m) * s


@njit(**_JIT)
def augment_views_(
    views,
    jitter_order,
    jitter_factors,
    gray,
    blur_weights,
    blur_radius,
    solarize,
    mean,
    inv_std,
    solarize_threshold=128.0 / 255.0,
    zero_pad=False,
):
    """The float ops of n views of one size, in place, in torchvision's pipeline order:
    colour jitter, grayscale, blur, solarize, normalise.

    views: (n, 3, S, S) float32 in [0, 1]; jitter_order: (n, 4) op ids, -1 to skip (a view
    without jitter is all -1); jitter_factors: (n, 4); gray, solarize: (n,) bool;
    blur_weights: (n, K) taps; blur_radius: (n,) radius of the nonzero taps, -1 for no blur;
    mean, inv_std: (3,); solarize_threshold: values >= it are inverted (RandomSolarize(128)
    on uint8 is 128 / 255); zero_pad: blur with zero padding instead of reflect (blur_).
    """
    n, size = views.shape[0], views.shape[2]
    for v in range(n):
        view = views[v].reshape(3, size * size)
        color_jitter_(view, jitter_order[v], jitter_factors[v])
        if gray[v]:
            to_gray_(view)
        if blur_radius[v] >= 0:
            blur_(view, size, blur_weights[v], blur_radius[v], zero_pad)
        if solarize[v]:
            solarize_(view, np.float32(solarize_threshold))
        normalize_(view, mean, inv_std)


_compiled = False


def warm_up() -> None:
    """Compile the kernels in this process (or load them from the cache), once.

    A cold compile takes seconds; done before the DataLoader forks its workers, they
    inherit the compiled code instead of each compiling it on its first sample.
    """
    global _compiled
    if _compiled:
        return
    size = 4
    views = np.zeros((1, 3, size, size), dtype=np.float32)
    augment_views_(
        views,
        np.zeros((1, 4), dtype=np.int8),
        np.ones((1, 4), dtype=np.float32),
        np.ones(1, dtype=np.bool_),
        np.ones((1, 3), dtype=np.float32) / 3,
        np.ones(1, dtype=np.int32),
        np.ones(1, dtype=np.bool_),
        np.zeros(3, dtype=np.float32),
        np.ones(3, dtype=np.float32),
        0.5,
        False,
    )
    _compiled = True
