"""Batching of multi-crop samples, with the iBOT masks built here (in the workers).

Crops are stacked view-major: for a batch of B images, rows [v * B, (v + 1) * B) hold view v
of every image, so `crops.chunk(n_views)` gives one tensor per view and the teacher
output of view v lines up with the student outputs of the other views image by image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ssl_zoo.data.masking import BlockMaskGenerator, check_mask_ratio_args, sample_masks


def _stack_view_major(samples: Sequence[Mapping], key: str) -> tuple[torch.Tensor | None, int]:
    counts = {len(views[key]) for views, _ in samples}
    if len(counts) != 1:
        raise ValueError(f"all samples must have the same number of {key}, got {sorted(counts)}")
    n_views = counts.pop()
    if n_views == 0:
        return None, 0
    crops = [views[key][v] for v in range(n_views) for views, _ in samples]
    return torch.stack(crops), n_views


class MultiCropCollate:
    """Collate a list of (views, label) from MultiCropTransform into one batch.

    Args:
        mask_generator: when set, one block mask per global crop is added to the batch
            (iBOT / DINOv2); its grid is the patch grid of the global crops.
        mask_ratio_min_max: range of the masked fraction of a masked crop.
        mask_probability: fraction of the global crops that get a mask.

    Returns a dict:
        global_crops: (n_global * B, 3, G, G), view-major.
        local_crops: (n_local * B, 3, L, L), view-major, or None without local crops.
        labels: (B,) int64.
        masks: (n_global * B, H * W) bool, row-major patches (only with a mask_generator).
        mask_weights: (n_global * B,) float32, 1 / max(masked patches of the crop, 1)
            (only with a mask_generator), so each masked crop weighs the same in the loss.
    """

    def __init__(
        self,
        mask_generator: BlockMaskGenerator | None = None,
        mask_ratio_min_max: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 0.5,
    ) -> None:
        if mask_generator is not None and not isinstance(mask_generator, BlockMaskGenerator):
            raise ValueError(
                f"mask_generator must be a BlockMaskGenerator or None, got {type(mask_generator)}"
            )
        low, high, probability = check_mask_ratio_args(mask_ratio_min_max, mask_probability)
        self.mask_generator = mask_generator
        self.mask_ratio_min_max = (low, high)
        self.mask_probability = probability

    def __call__(self, samples: Sequence[tuple[Mapping, int]]) -> dict:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of samples")
        global_crops, n_global = _stack_view_major(samples, "global_crops")
        if global_crops is None:
            raise ValueError("samples must have at least one global crop")
        local_crops, _ = _stack_view_major(samples, "local_crops")
        labels = torch.as_tensor([int(label) for _, label in samples], dtype=torch.int64)
        batch = {"global_crops": global_crops, "local_crops": local_crops, "labels": labels}
        if self.mask_generator is not None:
            masks = sample_masks(
                global_crops.shape[0],
                self.mask_generator.grid_size,
                self.mask_ratio_min_max,
                self.mask_probability,
                generator=self.mask_generator,
            )
            batch["masks"] = masks
            batch["mask_weights"] = 1.0 / masks.sum(dim=1).clamp(min=1).to(torch.float32)
        return batch
