import math

import pytest
import torch

from ssl_zoo.data.masking import BlockMaskGenerator, sample_masks


def test_mask_shape_dtype_and_budget():
    torch.manual_seed(0)
    for grid in [(8, 8), (14, 14), (4, 6)]:
        generator = BlockMaskGenerator(grid)
        n = grid[0] * grid[1]
        deficits = []
        for requested in range(n + 1):
            for _ in range(5):
                mask = generator(requested)
                assert mask.shape == grid and mask.dtype == torch.bool
                count = int(mask.sum())
                assert count <= requested  # never more than requested
                if requested <= n // 2:
                    deficits.append(requested - count)
        # up to half the grid (the useful range), the budget is met almost exactly
        assert sum(deficits) / len(deficits) < 0.1
        assert max(deficits) <= 2


def test_request_clipped_to_grid():
    generator = BlockMaskGenerator(4)
    assert generator(0).sum() == 0
    assert generator(-3).sum() == 0
    assert generator(100).sum() <= 16


def test_masks_are_blockwise():
    """Masked patches come in blocks: most have a masked 4-neighbour (random masking of
    30% would give about 1 - 0.7**4 = 76% at best, blocks give far more)."""
    torch.manual_seed(0)
    generator = BlockMaskGenerator(14, min_num_patches=4)
    with_neighbour = total = 0
    for _ in range(50):
        mask = generator(60)
        padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))[0, 0]
        neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        with_neighbour += int((mask & (neighbours > 0)).sum())
        total += int(mask.sum())
    assert with_neighbour / total > 0.95


def test_aspect_and_area_limits():
    torch.manual_seed(0)
    # square blocks of exactly 4 patches (2x2) on an empty grid
    generator = BlockMaskGenerator(
        8, min_num_patches=4, max_num_patches=4, max_aspect=1.0, min_aspect=1.0
    )
    for _ in range(20):
        mask = generator(4)
        rows, cols = mask.nonzero(as_tuple=True)
        assert int(mask.sum()) == 4
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1


def test_explicit_rng_is_reproducible():
    generator = BlockMaskGenerator(14)
    a = generator(50, rng=torch.Generator().manual_seed(3))
    b = generator(50, rng=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    masks_a = sample_masks(16, 14, generator=generator, rng=torch.Generator().manual_seed(1))
    masks_b = sample_masks(16, 14, generator=generator, rng=torch.Generator().manual_seed(1))
    assert torch.equal(masks_a, masks_b)


def test_sample_masks_fraction_ratios_and_order():
    torch.manual_seed(0)
    grid, n_images, low, high = 8, 200, 0.1, 0.5
    n = grid * grid
    generator = BlockMaskGenerator(grid)
    masks = sample_masks(n_images, grid, (low, high), 0.5, generator=generator)
    assert masks.shape == (n_images, n) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    masked = counts > 0
    assert int(masked.sum()) == 100  # exactly round(B * p) images carry a mask
    ratios = counts[masked].float() / n
    # requested int(ratio * N) with ratio in [low, high]; realised <= requested
    assert ratios.max() <= high
    assert ratios.min() >= (math.floor(low * n) - 2) / n
    # stratified over the range: it is covered evenly from end to end
    assert ratios.min() <= low + 0.02 and ratios.max() >= high - 0.03
    assert abs(ratios.mean().item() - (low + high) / 2) < 0.02
    # shuffled: the masked images are not simply the first ones
    assert not masked[:100].all()


def test_sample_masks_probability_extremes_and_rounding():
    generator = BlockMaskGenerator((4, 6))
    assert sample_masks(10, (4, 6), mask_probability=0.0, generator=generator).sum() == 0
    full = sample_masks(10, (4, 6), (0.2, 0.5), mask_probability=1.0, generator=generator)
    assert full.shape == (10, 24) and bool((full.sum(1) > 0).all())
    partial = sample_masks(10, (4, 6), (0.2, 0.5), mask_probability=0.3, generator=generator)
    assert int((partial.sum(1) > 0).sum()) == 3
    assert sample_masks(0, 4).shape == (0, 16)
    # without a generator, a default one is built for the grid
    assert sample_masks(4, (4, 6), mask_probability=1.0).shape == (4, 24)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mask_ratio_min_max": (0.5, 0.1)}, "mask_ratio_min_max"),
        ({"mask_ratio_min_max": (-0.1, 0.5)}, "mask_ratio_min_max"),
        ({"mask_ratio_min_max": (0.1, 1.5)}, "mask_ratio_min_max"),
        ({"mask_ratio_min_max": 0.3}, "mask_ratio_min_max"),
        ({"mask_probability": 1.5}, "mask_probability"),
        ({"mask_probability": -0.1}, "mask_probability"),
        ({"n_images": -1}, "n_images"),
        ({"n_patches_grid": 0}, "n_patches_grid"),
        ({"generator": BlockMaskGenerator(5)}, "grid"),
    ],
)
def test_sample_masks_bad_arguments(kwargs, name):
    args = {"n_images": 4, "n_patches_grid": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        sample_masks(**args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grid_size": 0}, "grid_size"),
        ({"grid_size": (4, 0)}, "grid_size"),
        ({"grid_size": (4, 4, 4)}, "grid_size"),
        ({"min_num_patches": 0}, "min_num_patches"),
        ({"max_num_patches": 2}, "max_num_patches"),
        ({"min_aspect": 0.0}, "min_aspect"),
        ({"max_aspect": 0.1}, "max_aspect"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_generator_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BlockMaskGenerator(**{"grid_size": 8, **kwargs})
