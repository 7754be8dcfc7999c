"""BatchNorm with statistics over all processes, on any device (CPU + gloo included).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors, so ``trainer.sync_batchnorm=true``
could not run on the tested path (2 gloo CPU processes). The DINO and BYOL references
convert every BatchNorm of student and teacher to SyncBatchNorm under multi-process
training: the statistics are those of the global batch, as in one process.

How: each process computes, per channel, its count, sum and sum of squares; one
differentiable all-reduce (``ssl_zoo.parallel.collectives.all_reduce_sum_autograd``) of these
2C+1 numbers gives the global mean and (biased) variance. Autograd differentiates
through the all-reduce, so the backward is exact (input, weight and bias gradients
equal those of one process on the whole batch) and needs no hand-written formula.
Cost: one all-reduce of 2C+1 float64 per BatchNorm layer per training forward and one
in its backward; autograd keeps one more activation-sized tensor per layer than the
fused BatchNorm kernel. Eval mode (running statistics) and one process are plain
BatchNorm, bitwise.

Use :func:`convert_sync_batchnorm` on a model (e.g. in an FSDP2 ``configure_model``,
where Lightning ignores layer-sync plugins), or the Lightning plugin
``ssl_zoo.parallel.layer_sync.SyncBatchNormLayerSync`` (``ssl_zoo.train`` passes it for
``trainer.sync_batchnorm=true`` on anything but CUDA GPUs, where torch's fused
SyncBatchNorm is used). Plain torch, like the rest of models/: no Lightning import.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_zoo.parallel import collectives

# Converted: exactly these classes. A subclass (e.g. timm's BatchNormAct2d) may add
# behaviour to forward that a conversion would silently drop, so it is refused instead.
_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SyncBatchNorm(_BatchNorm):
    """Drop-in for ``nn.BatchNorm{1,2,3}d`` (input (N, C, *)) whose training-mode
    statistics are those of the batch of all processes in ``process_group`` (default:
    all). Ranks may hold different batch sizes (zero included, if another rank has
    data). Running statistics are updated as nn.BatchNorm does (momentum, or cumulative
    average with ``momentum=None``; unbiased variance over the global count), so they
    are identical on every process."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group
        # What revert_sync_batchnorm gives back (set by convert_sync_batchnorm).
        self.original_class: type[_BatchNorm] = _AnyDimBatchNorm

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects input (N, C, *), got {input.dim()}D input")

    def _world_size(self) -> int:
        if not collectives.is_distributed():
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_stats or self._world_size() == 1:
            return super().forward(input)  # running statistics, or nothing to sync
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm expects {self.num_features} channels, got input {tuple(input.shape)}")

        dims = [0, *range(2, input.dim())]
        channels = self.num_features
        # Statistics in fp32 at least (bf16/fp16 activations under autocast), like the
        # fused kernels.
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = input.numel() // channels
        if count > 0:
            # Local mean and variance by torch's stable reduction, then sum and sum of
            # squares rebuilt from them in float64: var = E[x^2] - mean^2 over the
            # global batch would lose most fp32 digits when |mean| >> std; in float64
            # the only fp32 errors left are those of the local mean, and they enter
            # the global variance multiplied by (local mean - global mean), small.
            var_local, mean_local = torch.var_mean(x, dim=dims, correction=0)
            mean_local, var_local = mean_local.double(), var_local.double()
            sums = mean_local * count
            squares = (var_local + mean_local * mean_local) * count
        else:
            # An empty local batch still takes part in the all-reduce (forward and
            # backward), or the other processes would wait forever.
            sums = x.sum(dim=dims).double()
            squares = (x * x).sum(dim=dims).double()
        local = torch.cat([sums, squares, sums.new_full((1,), float(count))])
        total = collectives.all_reduce_sum_autograd(local, self.process_group)
        n = total[-1].detach()
        global_count = int(n.item())
        if global_count <= 1:
            # Same rule (and message) as nn.BatchNorm: a variance needs 2 values.
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(input.shape)} "
                f"({global_count} value(s) per channel over all processes)"
            )
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)

        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), global_count)

        shape = [1, channels] + [1] * (input.dim() - 2)
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)
        scale = invstd if self.weight is None else invstd * self.weight.to(x.dtype)
        out = (x - mean.to(x.dtype).view(shape)) * scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype).view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        # nn.BatchNorm's rule: num_batches_tracked += 1; factor = momentum, or
        # 1 / num_batches_tracked (cumulative average) when momentum is None; the running
        # variance takes the unbiased batch variance (here over the global count).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (count / (count - 1))
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


class _AnyDimBatchNorm(_BatchNorm):
    """What a SyncBatchNorm built directly (not converted) reverts to: nn.BatchNorm of
    any input rank (as Lightning's own revert does)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects input (N, C, *), got {input.dim()}D input")


def _swap(old: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """``new`` takes ``old``'s parameter and buffer objects themselves (so optimizers,
    requires_grad, devices and any other reference stay valid) and its training mode."""
    new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new


def _replace(module: nn.Module, convert, seen: dict[int, nn.Module]) -> nn.Module:
    # ``seen``: a module reachable by two paths (shared between two parents) becomes one
    # new module, not two that would share parameters but update their statistics twice.
    if id(module) in seen:
        return seen[id(module)]
    new = convert(module)
    seen[id(module)] = new
    for name, child in module.named_children():
        new._modules[name] = _replace(child, convert, seen)
    return new


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` in ``module`` (``module`` itself included)
    by a :class:`SyncBatchNorm` sharing its parameters and buffers, training mode and
    requires_grad; returns the (possibly new) root. State dict keys are unchanged, so
    checkpoints load either way. Idempotent; ``revert_sync_batchnorm`` undoes it.

    Raises TypeError for a BatchNorm subclass it cannot convert without changing its
    behaviour (e.g. timm's BatchNormAct2d), naming it."""

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm)) or not isinstance(m, _BatchNorm):
            return m
        if type(m) not in _CONVERTIBLE:
            raise TypeError(
                f"convert_sync_batchnorm: {type(m).__module__}.{type(m).__name__} is a BatchNorm subclass that "
                "may change what forward does; only nn.BatchNorm1d/2d/3d are converted"
            )
        new = SyncBatchNorm(
            m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, process_group, device="meta"
        )
        new.original_class = type(m)
        return _swap(m, new)

    return _replace(module, convert, {})


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_sync_batchnorm`: every SyncBatchNorm becomes its
    original class again, with the same parameters, buffers and mode."""

    def revert(m: nn.Module) -> nn.Module:
        if not isinstance(m, SyncBatchNorm):
            return m
        new = m.original_class(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta")
        return _swap(m, new)

    return _replace(module, revert, {})
