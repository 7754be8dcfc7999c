"""Set-up shared by the transform tests."""

from __future__ import annotations

import pytest
import torch

# Every augmentation switched off: only the random resized crop remains.
NO_AUGMENT = {
    "flip_p": 0.0,
    "color_jitter_p": 0.0,
    "grayscale_p": 0.0,
    "global_blur_p": 0.0,
    "local_blur_p": 0.0,
    "global_solarize_p": 0.0,
    "local_solarize_p": 0.0,
}
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # no normalisation


@pytest.fixture(scope="module")
def one_thread():
    """Per-image transforms are tiny ops: like a DataLoader worker, use one thread (on a
    busy 2-core machine, intra-op threads make them about 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
