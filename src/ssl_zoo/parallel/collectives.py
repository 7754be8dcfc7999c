"""Every collective the project uses, in one place.

Each helper is a no-op (or the identity) when no process group is initialised, so the
same code runs on one process or many (DESIGN principle 8).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes, in place; returns it for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_sum_autograd(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` over the processes of ``group`` (default: all), out of place and
    differentiable: the backward all-reduces the gradient, i.e. each process receives the
    gradient of the sum of every process's loss, which is what DDP then averages. Every
    process must run the backward through it (as DDP does); the identity without a
    process group. Used by ssl_zoo.parallel.sync_batchnorm for the cross-process batch
    statistics.

    torch's functional collective, not ``torch.distributed.nn.functional.all_reduce``
    (deprecated in torch 2.14); both work on gloo (CPU) and nccl."""
    if not is_distributed():
        return tensor
    from torch.distributed import _functional_collectives as funcol

    reduced = funcol.all_reduce(tensor, "sum", group if group is not None else dist.group.WORLD)
    # The result may be an async handle: wait here, so that callers get a plain tensor.
    return funcol.wait_tensor(reduced)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all processes (sizes may differ per rank)."""
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    max_n = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((max_n, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def all_gather_objects(obj: object) -> list[object]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor``: the local shard of a DTensor (FSDP2), else the
    tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(N,) float32 L2 norms of whole tensors, whether plain or sharded.

    FSDP2 shards a parameter (and its gradient) along dim 0 over all processes, so the
    squared norm of the whole is the sum over processes of the local squared norms: one
    all-reduce of N floats, only when something is sharded. Plain tensors (replicated,
    e.g. under DDP) keep their local norm."""
    if not tensors:
        return torch.zeros(0)
    squares = torch.stack(torch._foreach_norm([local_tensor(t) for t in tensors])).float().square()
    flags = [isinstance(t, DTensor) for t in tensors]  # decided on the host: no device sync
    if not any(flags):
        return squares.sqrt()
    sharded = torch.tensor(flags, device=squares.device)
    summed = all_reduce_sum(torch.where(sharded, squares, torch.zeros_like(squares)))
    return torch.where(sharded, summed, squares).sqrt()
