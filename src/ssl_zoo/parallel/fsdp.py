"""FSDP2: Lightning's ModelParallelStrategy with ``fully_shard`` over every process.

``trainer=fsdp`` (GPUs) and ``trainer=fsdp_cpu`` (2 gloo processes, the tested path) use
:class:`FSDP2Strategy`. The method's ``configure_model`` (``ssl_zoo.methods.base``) calls
:func:`shard_method`, which applies one policy to student and teacher alike, so that
shard i of a teacher parameter is shard i of the student's and the EMA runs on local
tensors without communication (``ssl_zoo.models.ema``):

- the units each network declares (:class:`ShardUnits`: a backbone's blocks or stages, as
  its family's adapter says), then each network of the student and the teacher (backbone,
  heads), then the student-only modules (BYOL's predictor): each a ``fully_shard`` unit,
  all-gathered while it runs and resharded after;
- mixed precision by FSDP2's ``MixedPrecisionPolicy`` (parameters cast for compute,
  gradients reduced in ``reduce_dtype``), not by autocast: keep ``trainer.precision``
  at 32-true and set ``trainer.strategy.param_dtype``;
- Lightning builds the optimizer after this, over the sharded parameters.

Checkpoints are torch.distributed.checkpoint directories (one file per process plus
metadata), which load on any number of processes; :mod:`ssl_zoo.weights.load` reads them
in one process for eval, viz and export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from ssl_zoo.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(key: str, name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ConfigError(f"trainer.strategy.{key}={name!r}: use one of {sorted(_DTYPES)}, or null (no cast)")
    return _DTYPES[name]


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over all processes (no tensor parallelism).

    Args:
        param_dtype: dtype of the all-gathered parameters used in forward and backward
            (``bfloat16`` on recent GPUs); null keeps float32.
        reduce_dtype: dtype of the gradient reduce-scatter; null = param_dtype. float32
            keeps gradient sums exact under bf16 compute.
        reshard_after_forward: free the gathered parameters after each unit's forward
            (less memory, one more all-gather in backward); false keeps them until the
            backward (ZeRO-2-like: faster, more memory).
        save_distributed_checkpoint: a directory of per-process shards (true), or one
            file gathered on rank 0 (false; needs the whole model in one process's memory).
        process_group_backend: null = nccl on GPUs, gloo on CPUs.
    """

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = "float32",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )
        self.param_dtype = _dtype("param_dtype", param_dtype)
        self.reduce_dtype = _dtype("reduce_dtype", reduce_dtype)
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # One data-parallel dimension over every process of every node.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded directory as Lightning loads it (any number of processes wrote it); a
        single file (one process, DDP) loaded whole on every process and put into the
        shards. The file's optimizer state is keyed by position in the param groups, which
        Lightning would map to names in ``named_parameters`` order (another order than our
        groups'): it is mapped here by the groups themselves. The file is read by the
        trainer's CheckpointIO plugin (weights_only); train checked it before fit."""
        path = self.broadcast(checkpoint_path)
        if Path(path).is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        checkpoint = self.checkpoint_io.load_checkpoint(path, weights_only=True)
        options = StateDictOptions(full_state_dict=True, strict=self.lightning_module.strict_loading)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        for optimizer, state in zip(self.optimizers, checkpoint.pop("optimizer_states", [])):
            named = named_optimizer_state(state, optimizer, self.model)
            set_optimizer_state_dict(self.model, optimizer, named, options=StateDictOptions(full_state_dict=True))
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Lightning's save (shards, or one file gathered on rank 0), refusing non-finite
        weights as the file saves do (weights/atomic.py): each process checks the tensors
        it holds (its shards; the whole gathered model on rank 0, nothing elsewhere) and all
        agree, so every process raises together instead of some entering the collective save.
        The check is the trainer's CheckpointIO's (ssl_zoo's AtomicCheckpointIO), so this
        room needs no import from ssl_zoo.weights."""
        checker = getattr(self.checkpoint_io, "non_finite_tensors", None)
        local = {name: value.to_local() if hasattr(value, "to_local") else value
                 for name, value in checkpoint.get("state_dict", {}).items()}
        bad = checker(local) if checker is not None else []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, bad)
            bad = sorted(set().union(*every))  # a tensor whose shards are bad on several ranks: once
        if bad:
            raise self.checkpoint_io.non_finite_refusal(filepath, len(bad), bad[0])
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def fully_shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype or self.param_dtype)
        return {"mesh": self.device_mesh["data_parallel"], "mp_policy": policy,
                "reshard_after_forward": self.reshard_after_forward}


def named_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """``torch.optim`` state (integer ids: the parameters numbered in param_groups order)
    -> the same state keyed by parameter names, for ``set_optimizer_state_dict``. The
    numbering is read from ``optimizer``'s own groups, which must be built as the saved
    ones were (same method and config)."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = sum(len(group["params"]) for group in state["param_groups"])
    if saved != len(order):
        raise ValueError(f"the checkpoint's optimizer has {saved} parameters, this run's {len(order)}")
    return {
        "state": {order[int(k)]: v for k, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }


@runtime_checkable
class ShardUnits(Protocol):
    """A network that declares the submodules FSDP2 shards one at a time (a backbone)."""

    def shard_units(self) -> list[nn.Module]: ...


def check_shardable(strategy: Any, method: nn.Module) -> None:
    """ConfigError, before any process starts, if FSDP2 has nothing to shard block by block."""
    if not isinstance(strategy, FSDP2Strategy):
        return
    for module in method.student.values():
        if isinstance(module, ShardUnits) and not module.shard_units():
            name = getattr(module, "model_name", type(module).__name__)
            raise ConfigError(
                f"trainer.strategy is FSDP2 (trainer=fsdp / fsdp_cpu), but backbone.model_name={name} "
                "has no blocks to shard one at a time (its family declares none: ssl_zoo/models/adapters.py "
                "knows ViT, Swin, ConvNeXt and ResNet): choose one of those, or train this one with DDP "
                "(trainer=ddp_cpu / trainer=gpu)"
            )


def shard_method(method: nn.Module, strategy: FSDP2Strategy) -> None:
    """``fully_shard`` the method's networks with one policy (see the module docstring)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.nn.modules.batchnorm import _BatchNorm

    check_shardable(strategy, method)
    if strategy._layer_sync is not None:  # trainer.sync_batchnorm: Lightning applies it only under DDP
        strategy._layer_sync.apply(method)
    kwargs = strategy.fully_shard_kwargs()
    networks = [method.student] + ([method.teacher] if method.teacher is not None else [])
    if strategy.param_dtype not in (None, torch.float32):
        # BatchNorm stays float32, each layer its own unit (CPU kernels refuse bf16 weights
        # with fp32 running statistics; statistics in bf16 would lose precision anyway).
        policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32,
                                      output_dtype=strategy.param_dtype)
        for module in [*networks, *method.student_only_modules()]:
            for layer in [m for m in module.modules() if isinstance(m, _BatchNorm)]:
                fully_shard(layer, **{**kwargs, "mp_policy": policy})
    for network in networks:
        for module in network.values():
            if isinstance(module, ShardUnits):
                for unit in module.shard_units():
                    fully_shard(unit, **kwargs)
            fully_shard(module, **kwargs)
    for module in method.student_only_modules():
        fully_shard(module, **kwargs)
    unsharded = [name for name, p in method.named_parameters() if not isinstance(p, torch.distributed.tensor.DTensor)]
    if unsharded:  # their gradients would never be reduced across processes
        raise RuntimeError(f"parameters left out of FSDP2 sharding: {unsharded[:5]}")


@contextmanager
def gathered(module: nn.Module, reshard_after_forward: bool = True) -> Iterator[None]:
    """Whole (unsharded) parameters in every FSDP2 unit of ``module`` for the duration,
    for code that calls a network's parts outside its forward (attention maps). A
    collective: every process must enter. No-op for an unsharded module.
    ``reshard_after_forward``: the strategy's setting, restored on exit."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:  # a forward inside must not reshard what we hold
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard_after_forward)
