"""Block-wise patch masking for masked image modelling (iBOT / DINOv2).

BlockMaskGenerator follows the block-wise masking of BEiT (Bao et al. 2021, Algorithm 1):
rectangular blocks are added until the requested number of patches is masked; each
block's area s is uniform in [min_num_patches, remaining budget], its aspect ratio r is
log-uniform in [min_aspect, max_aspect], its sides are a = sqrt(s r) rows and
b = sqrt(s / r) columns, and its top-left corner is uniform over the valid positions.
Unlike the paper's loop, which stops after overshooting the budget, a block is only kept
when the patches it newly masks fit in the remaining budget, so a mask never has more
patches than requested (it may have slightly fewer when no block fits in a few tries).

sample_masks spreads mask ratios over a batch like DINOv2's collate: a fraction
`mask_probability` of the images is masked, with ratios stratified over the range.

Random numbers come from torch (an explicit torch.Generator, or torch's global generator,
which the DataLoader seeds differently in every worker), so masks built in the collate
differ across workers and are reproducible under a fixed seed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


def _grid(name: str, value) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        grid = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {value!r}") from None
    if len(grid) != 2 or not all(
        isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0 for x in grid
    ):
        raise ValueError(f"{name} must be an int > 0 or a pair of ints > 0, got {value!r}")
    return int(grid[0]), int(grid[1])


class BlockMaskGenerator:
    """Random rectangular blocks on a (H, W) patch grid, BEiT style.

    Args:
        grid_size: patches per side, int (square) or (H, W).
        min_num_patches: smallest block area in patches (BEiT: 16 on 14x14; DINOv2: 4).
            A smaller block is only used to fill a remaining budget below this value.
        max_num_patches: largest block area; None = no limit beyond the budget (DINOv2
            uses 0.5 * H * W).
        min_aspect: smallest block aspect ratio (rows / columns); BEiT: 0.3.
        max_aspect: largest aspect ratio; None = 1 / min_aspect.
        max_attempts: tries to place one block before giving up on the remaining budget.
    """

    def __init__(
        self,
        grid_size: int | Sequence[int],
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 10,
    ) -> None:
        self.grid_size = _grid("grid_size", grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if (
            not isinstance(min_num_patches, numbers.Integral)
            or isinstance(min_num_patches, bool)
            or min_num_patches < 1
        ):
            raise ValueError(f"min_num_patches must be an int >= 1, got {min_num_patches!r}")
        if max_num_patches is None:
            max_num_patches = self.num_patches
        if (
            not isinstance(max_num_patches, numbers.Integral)
            or isinstance(max_num_patches, bool)
            or max_num_patches < min_num_patches
        ):
            raise ValueError(
                f"max_num_patches must be None or an int >= min_num_patches "
                f"({min_num_patches}), got {max_num_patches!r}"
            )
        if not isinstance(min_aspect, numbers.Real) or not min_aspect > 0:
            raise ValueError(f"min_aspect must be a number > 0, got {min_aspect!r}")
        if max_aspect is None:
            max_aspect = 1.0 / min_aspect
        if not isinstance(max_aspect, numbers.Real) or not max_aspect >= min_aspect:
            raise ValueError(
                f"max_aspect must be None or a number >= min_aspect ({min_aspect}), "
                f"got {max_aspect!r}"
            )
        if not isinstance(max_attempts, numbers.Integral) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = int(max_num_patches)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.max_attempts = int(max_attempts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size={self.grid_size}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"aspect=({math.exp(self.log_aspect[0]):.3g}, {math.exp(self.log_aspect[1]):.3g}))"
        )

    def _add_block(self, mask: torch.Tensor, budget: int, rng: torch.Generator | None) -> int:
        """Mask one block of at most `budget` new patches; returns how many were added."""
        height, width = self.grid_size
        high = min(budget, self.max_num_patches)
        low = min(self.min_num_patches, high)
        for _ in range(self.max_attempts):
            u_area, u_aspect, u_top, u_left = torch.rand(4, generator=rng).tolist()
            area = low + (high - low) * u_area
            aspect = math.exp(
                self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * u_aspect
            )
            rows = max(1, round(math.sqrt(area * aspect)))
            cols = max(1, round(math.sqrt(area / aspect)))
            if rows > height or cols > width:
                continue
            top = min(int(u_top * (height - rows + 1)), height - rows)
            left = min(int(u_left * (width - cols + 1)), width - cols)
            block = mask[top : top + rows, left : left + cols]
            new = rows * cols - int(block.sum())
            if 0 < new <= budget:
                block.fill_(True)
                return new
        return 0

    def __call__(
        self, num_masking_patches: int, rng: torch.Generator | None = None
    ) -> torch.Tensor:
        """A (H, W) bool mask with at most `num_masking_patches` True entries.

        The request is clipped to [0, H * W]; the result is close to it (blocks are added
        until the budget is met or no block fits in `max_attempts` tries).
        """
        mask = torch.zeros(self.grid_size, dtype=torch.bool)
        target = max(0, min(int(num_masking_patches), self.num_patches))
        count = 0
        while count < target:
            added = self._add_block(mask, target - count, rng)
            if added == 0:
                break
            count += added
        return mask


def check_mask_ratio_args(mask_ratio_min_max, mask_probability) -> tuple[float, float, float]:
    """Validated (ratio_min, ratio_max, probability)."""
    try:
        low, high = (float(x) for x in mask_ratio_min_max)
    except (TypeError, ValueError):
        raise ValueError(
            f"mask_ratio_min_max must be a pair (min, max), got {mask_ratio_min_max!r}"
        ) from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got {mask_ratio_min_max!r}"
        )
    if (
        not isinstance(mask_probability, numbers.Real)
        or isinstance(mask_probability, bool)
        or not 0.0 <= mask_probability <= 1.0
    ):
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability!r}")
    return low, high, float(mask_probability)


def sample_masks(
    n_images: int,
    n_patches_grid: int | Sequence[int],
    mask_ratio_min_max: Sequence[float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: BlockMaskGenerator | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks for a batch, with mask ratios spread over a range (DINOv2's collate).

    round(n_images * mask_probability) images are masked. Their target ratios are
    stratified: [min, max] is split into that many equal bins and one ratio is drawn
    uniformly in each bin; image i of them asks for int(ratio_i * N) patches. The other
    images get an empty mask, and the order of the images is shuffled.

    Args:
        n_images: B, the number of masks.
        n_patches_grid: the patch grid, int (square side) or (H, W); N = H * W.
        mask_ratio_min_max: range of the masked fraction, 0 <= min <= max <= 1.
        mask_probability: fraction of the images that get a mask, in [0, 1].
        generator: the block generator; None builds BlockMaskGenerator(n_patches_grid).
            Its grid must equal n_patches_grid.
        rng: torch.Generator for all draws; None uses torch's global generator.

    Returns:
        (B, N) bool tensor, patches in row-major order (the ViT token order).
    """
    if not isinstance(n_images, numbers.Integral) or isinstance(n_images, bool) or n_images < 0:
        raise ValueError(f"n_images must be an int >= 0, got {n_images!r}")
    grid = _grid("n_patches_grid", n_patches_grid)
    low, high, probability = check_mask_ratio_args(mask_ratio_min_max, mask_probability)
    if generator is None:
        generator = BlockMaskGenerator(grid)
    elif generator.grid_size != grid:
        raise ValueError(
            f"generator.grid_size {generator.grid_size} does not match n_patches_grid {grid}"
        )
    n_total = grid[0] * grid[1]
    n_masked = min(n_images, math.floor(n_images * probability + 0.5))
    masks = torch.zeros(n_images, n_total, dtype=torch.bool)
    if n_masked > 0:
        edges = torch.linspace(low, high, n_masked + 1, dtype=torch.float64)
        ratios = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(
            n_masked, generator=rng, dtype=torch.float64
        )
        for i, ratio in enumerate(ratios.tolist()):
            masks[i] = generator(int(ratio * n_total), rng=rng).flatten()
    return masks[torch.randperm(n_images, generator=rng)]
