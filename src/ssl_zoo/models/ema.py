"""EMA teacher (DINO / BYOL "momentum encoder")."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_zoo.parallel.collectives import local_tensor


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student``, never touched by the optimizer, in teacher mode
    (see :func:`set_teacher_mode`)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    set_teacher_mode(teacher)
    return teacher


@torch.no_grad()
def reinitialize_(module: nn.Module) -> None:
    """Draw fresh initial weights for ``module`` in place, with the scheme it was built
    with: a submodule with its own ``init_weights`` (timm's ResNet and ViT) re-runs it;
    any other leaf with ``reset_parameters`` (linear, conv, norm layers) re-runs that.
    For BYOL's independently initialised target network (``method.target_init``)."""
    init_weights = getattr(module, "init_weights", None)
    if callable(init_weights):
        init_weights()
        return
    if callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()
    for child in module.children():
        reinitialize_(child)


def set_teacher_mode(teacher: nn.Module) -> None:
    """Eval mode (no dropout, no drop path), except BatchNorm, which normalises with the
    statistics of the batch as in the reference DINO and BYOL code, where the teacher
    forward runs in training mode. Running statistics of an EMA network would lag its
    weights; batch statistics don't. (BatchNorm running stats still accumulate, so the
    teacher can be evaluated in plain eval mode.)"""
    teacher.eval()
    for module in teacher.modules():
        if isinstance(module, _BatchNorm):
            module.train()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, over parameters.

    Runs on this process's local tensors with one ``torch._foreach_lerp_``: plain
    parameters, or the local shards of FSDP2 DTensors when student and teacher are sharded
    with the same policy (then shard i of the teacher is shard i of the student's
    parameter, and the update needs no communication). Buffers are left alone: BatchNorm
    running statistics of the teacher come from its own forward passes."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_params = [local_tensor(p) for p in teacher.parameters()]
    s_params = [local_tensor(p.detach()) for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError(
            f"teacher and student have different parameter lists ({len(t_params)} vs {len(s_params)} tensors)"
        )
    mismatch = next(((i, t.shape, s.shape) for i, (t, s) in enumerate(zip(t_params, s_params)) if t.shape != s.shape), None)
    if mismatch is not None:
        raise RuntimeError(
            f"teacher and student parameter {mismatch[0]} have different local shapes {tuple(mismatch[1])} vs "
            f"{tuple(mismatch[2])}: shard both with the same policy"
        )
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
