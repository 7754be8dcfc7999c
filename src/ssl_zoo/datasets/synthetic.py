"""Procedural datasets whose class survives cropping (candidates for the embedded default).

In ``ShapesDataset`` the class is the outline of one object, which random crops cut
away; what two crops share is background, colour band and polarity, so crop-invariance
learns those. The generators here put the class in every part of the image:

- ``TexelsDataset``: many small copies of one shape (the class) scattered over the whole
  image, each with its own colour, brightness, size and rotation;
- ``PatternsDataset``: a formula-driven texture family per class (stripes, checkers,
  dot lattices, zigzags, bricks, ...) with random period, orientation, phase and colours;
- ``FractalsDataset``: one iterated-function system per class (FractalDB, Kataoka et al.
  2020), self-similar so that any part looks like the whole, rendered at a random pose.

Every generator is deterministic for (seed, split), vectorised numpy, chunked to bound
memory; ``docs/default_data.md`` measures them.
"""

from __future__ import annotations

import numpy as np
import torch

from ssl_zoo.datasets.generated import GeneratedDataset
from ssl_zoo.datasets.shapes import _SHAPE_FNS, SHAPE_NAMES


def _smooth_field(rng: np.random.Generator, n: int, size: int, coarse: int = 4) -> np.ndarray:
    """(n, size, size) smooth random field in [0, 1] (bicubic upsampled noise)."""
    grid = torch.from_numpy(rng.uniform(0, 1, size=(n, 1, coarse, coarse)).astype(np.float32))
    field = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
    return field[:, 0].clamp(0, 1).numpy()


def _grey_background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size) light grey, its brightness varying smoothly over the image."""
    low, high = rng.uniform(0.55, 0.9, size=(2, n, 1, 1)).astype(np.float32)
    field = _smooth_field(rng, n, size)
    return low * (1 - field) + high * field


def _to_rgb_with_noise(grey: np.ndarray, rng: np.random.Generator, std: float = 0.03) -> np.ndarray:
    """(n, H, W) grey -> (n, 3, H, W) with independent pixel noise per channel."""
    img = np.repeat(grey[:, None], 3, axis=1)
    return img + std * rng.standard_normal(size=img.shape, dtype=np.float32)


# --------------------------------------------------------------------------------------
# Texels: many small copies of the class shape.
# --------------------------------------------------------------------------------------


class TexelsDataset(GeneratedDataset):
    """Each image is covered by 10 small dark copies of one shape (its class), each with
    its own grey level, size (10-19% of the image side) and rotation, at random places
    over a light background whose brightness varies smoothly. Any crop of a few texels
    shows the class.

    Nothing else is the same all over an image: texel colours, sizes and poses are drawn
    per texel, the background brightness is what the colour jitter changes anyway, and
    the images are grey. (Measured in docs/default_data.md: with a random hue per texel or
    per background, crop-invariance learns the image's colours instead of its shape.)
    """

    class_names = SHAPE_NAMES
    texels_per_image = 10
    supersample = 2  # rendered at 2x and averaged: antialiased edges

    def render(self, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        n, k = labels.shape[0], self.texels_per_image
        s = self.supersample
        grid = (np.arange(size * s, dtype=np.float32) + 0.5) / s
        canvas = _grey_background(rng, n, size * s)
        radius = (rng.uniform(0.1, 0.19, size=(n, k)) * size).astype(np.float32)
        cx, cy = (rng.uniform(-0.05, 1.05, size=(2, n, k)) * size).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi, size=(n, k))
        cos, sin = (np.cos(theta) / radius).astype(np.float32), (np.sin(theta) / radius).astype(np.float32)
        ink = rng.uniform(0.0, 0.3, size=(n, k)).astype(np.float32)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            shape_fn = _SHAPE_FNS[self.classes[c]]
            for t in range(k):  # painter's order: later texels cover earlier ones
                dx = grid[None, None, :] - cx[idx, t, None, None]
                dy = grid[None, :, None] - cy[idx, t, None, None]
                c_, s_ = cos[idx, t, None, None], sin[idx, t, None, None]
                inside = shape_fn(dx * c_ + dy * s_, dy * c_ - dx * s_)
                canvas[idx] = np.where(inside, ink[idx, t, None, None], canvas[idx])
        grey = canvas.reshape(n, size, s, size, s).mean(axis=(2, 4))
        return _to_rgb_with_noise(grey, rng)


# --------------------------------------------------------------------------------------
# Patterns: one texture family per class.
# --------------------------------------------------------------------------------------

PATTERN_NAMES = (
    "stripes",
    "checker",
    "dots",
    "hexdots",
    "zigzag",
    "crosshatch",
    "rings",
    "bricks",
    "waves",
    "blobs",
)


def _pattern(kind: str, along: np.ndarray, across: np.ndarray, xs, ys, period, rng, n: int, size: int) -> np.ndarray:
    """(n, H, W) in [0, 1]: 1 = ink, 0 = paper, for one texture family."""
    frac_a, frac_c = along % 1.0, across % 1.0
    if kind == "stripes":
        return (frac_a < 0.45).astype(np.float32)
    if kind == "checker":
        return ((np.floor(along) + np.floor(across)) % 2).astype(np.float32)
    if kind == "dots":
        return ((frac_a - 0.5) ** 2 + (frac_c - 0.5) ** 2 < 0.28**2).astype(np.float32)
    if kind == "hexdots":
        row = np.floor(across)
        shifted = (along + 0.5 * (row % 2)) % 1.0
        return ((shifted - 0.5) ** 2 + (frac_c - 0.5) ** 2 < 0.3**2).astype(np.float32)
    if kind == "zigzag":
        tri = np.abs(frac_c * 2 - 1)  # triangle wave across
        return (((along + 0.6 * tri) % 1.0) < 0.4).astype(np.float32)
    if kind == "crosshatch":
        return ((frac_a < 0.25) | (frac_c < 0.25)).astype(np.float32)
    if kind == "rings":
        cy, cx = (rng.uniform(0.2, 0.8, size=(2, n, 1, 1)) * size).astype(np.float32)
        radius = np.hypot(xs - cx, ys - cy) / period
        return ((radius % 1.0) < 0.45).astype(np.float32)
    if kind == "bricks":
        row = np.floor(across * 2)
        shifted = (along + 0.5 * (row % 2)) % 1.0
        mortar = ((across * 2) % 1.0 < 0.2) | (shifted < 0.1)
        return mortar.astype(np.float32)
    if kind == "waves":
        return (((along + 0.25 * np.sin(2 * np.pi * across * 0.7)) % 1.0) < 0.4).astype(np.float32)
    if kind == "blobs":
        return (_smooth_field(rng, n, size, coarse=max(3, int(size / (1.3 * float(np.mean(period)))))) > 0.5).astype(np.float32)
    raise ValueError(kind)


class PatternsDataset(GeneratedDataset):
    """Each image is one texture family (its class) filling the frame, at a random period
    (5-9 px at 32 px), orientation and phase, dark ink on light paper (grey levels drawn
    per image), under uneven lighting, with pixel noise."""

    class_names = PATTERN_NAMES

    def render(self, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        n = labels.shape[0]
        coords = np.arange(size, dtype=np.float32) + 0.5
        ys, xs = coords[None, :, None], coords[None, None, :]
        angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
        period = (rng.uniform(5.0, 9.0, size=(n, 1, 1)) * size / 32).astype(np.float32)
        phase = rng.uniform(0, 1, size=(2, n, 1, 1)).astype(np.float32)
        along = (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase[0]
        across = (-xs * np.sin(angle) + ys * np.cos(angle)) / period + phase[1]
        ink = np.empty((n, size, size), dtype=np.float32)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            ink[idx] = _pattern(self.classes[c], along[idx], across[idx], xs, ys, period[idx], rng, idx.size, size)
        # Grey, dark ink on light paper, each level drawn per image; uneven lighting.
        paper = rng.uniform(0.6, 0.9, size=(n, 1, 1)).astype(np.float32)
        ink_level = rng.uniform(0.0, 0.35, size=(n, 1, 1)).astype(np.float32)
        grey = paper * (1 - ink) + ink_level * ink
        shade = 0.8 + 0.4 * _smooth_field(rng, n, size)
        return _to_rgb_with_noise(grey * shade, rng)


# --------------------------------------------------------------------------------------
# Fractals: one iterated-function system per class.
# --------------------------------------------------------------------------------------


def _class_systems(num: int, seed: int = 1234, maps: int = 4) -> list[np.ndarray]:
    """``num`` IFS, each (maps, 2, 3) affine maps, drawn once from a fixed seed and kept
    when their attractor fills a reasonable part of its bounding box (FractalDB's
    filling-rate filter)."""
    rng = np.random.default_rng(seed)
    systems = []
    while len(systems) < num:
        a = rng.uniform(-1, 1, size=(maps, 2, 3))
        singular = np.linalg.svd(a[:, :, :2], compute_uv=False)
        a[:, :, :2] *= (rng.uniform(0.35, 0.75, size=(maps, 1)) / singular[:, :1])[:, :, None]
        points = _iterate(a[None], rng, 1, 3000)[0]
        span = points.max(0) - points.min(0)
        if span.min() < 0.2 * span.max():
            continue
        hist, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=16)
        if 0.2 < (hist > 0).mean() < 0.7:
            systems.append(a)
    return systems


def _iterate(systems: np.ndarray, rng: np.random.Generator, n: int, steps: int, burn_in: int = 20) -> np.ndarray:
    """Chaos game: (n, steps, 2) points of the attractors of ``systems`` (n, maps, 2, 3)."""
    maps = systems.shape[1]
    p = np.zeros((n, 2))
    out = np.empty((n, steps, 2))
    rows = np.arange(n)
    for t in range(steps + burn_in):
        m = systems[rows, rng.integers(0, maps, size=n)]
        p = np.einsum("nij,nj->ni", m[:, :, :2], p) + m[:, :, 2]
        if t >= burn_in:
            out[:, t - burn_in] = p
    return out


class FractalsDataset(GeneratedDataset):
    """Each image is the attractor of one class's IFS (self-similar: parts look like the
    whole), rotated, scaled to fill 70-100% of the frame, flipped at random, dark on a
    light grey background."""

    class_names = tuple(f"fractal{i}" for i in range(10))
    points = 2500

    def render(self, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        n = labels.shape[0]
        systems = np.stack(_class_systems(len(self.class_names)))[labels]
        pts = _iterate(systems, rng, n, self.points)
        pts = pts - pts.mean(axis=1, keepdims=True)
        extent = np.abs(pts).max(axis=(1, 2))[:, None, None]
        theta = rng.uniform(0, 2 * np.pi, n)
        rot = np.stack([np.cos(theta), -np.sin(theta), np.sin(theta), np.cos(theta)], 1).reshape(n, 2, 2)
        flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        rot[:, :, 0] *= flip[:, None]
        scale = rng.uniform(0.35, 0.5, n)[:, None, None] * size / extent
        pts = np.einsum("nij,ntj->nti", rot, pts) * scale + size / 2 + rng.uniform(-2, 2, size=(n, 1, 2))
        ix = np.clip(pts[..., 0].astype(int), 0, size - 1)
        iy = np.clip(pts[..., 1].astype(int), 0, size - 1)
        density = np.zeros((n, size * size), dtype=np.float32)
        np.add.at(density, (np.arange(n)[:, None], iy * size + ix), 1.0)
        density = density.reshape(n, size, size)
        alpha = np.clip(density / 3.0, 0, 1)
        ink = rng.uniform(0.0, 0.3, size=(n, 1, 1)).astype(np.float32)
        grey = _grey_background(rng, n, size) * (1 - alpha) + ink * alpha
        return _to_rgb_with_noise(grey, rng)
