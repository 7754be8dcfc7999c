"""What every evaluation pass during training (kNN, probe, pictures) keeps to, so that a
run is the same with or without them and can stop at any moment:

- :func:`own_random_streams`: the global generators (torch CPU, the device's CUDA, numpy,
  python ``random``) are as they were before the pass, whatever it drew (a DataLoader
  iterator draws its workers' base seed; drop path in a student forward draws);
- :func:`stop_requested`: a preemption signal is pending (``ssl_zoo.signals``); the pass
  stops at its next batch so that the checkpoint is written promptly. All-reduced under
  several processes: every process stops at the same batch (a sharded forward and the
  final gather are collectives).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from ssl_zoo import signals
from ssl_zoo.parallel import collectives


@contextlib.contextmanager
def own_random_streams(device: torch.device) -> Iterator[None]:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def stop_requested(device: torch.device) -> bool:
    flag = torch.tensor([signals.pending() is not None], dtype=torch.int32)
    if collectives.is_distributed():
        flag = collectives.all_reduce_sum(flag.to(device)).cpu()
    return bool(flag.item())


@contextlib.contextmanager
def batchnorm_statistics_kept(model: torch.nn.Module) -> Iterator[None]:
    """The BatchNorm running statistics of ``model`` as they were before the block (an
    evaluation that recalibrates them for itself leaves training's untouched)."""
    buffers = [(m, {k: v.clone() for k, v in m.named_buffers(recurse=False) if v is not None})
               for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, saved in buffers:
                for name, value in saved.items():
                    getattr(module, name).copy_(value)
