"""The one thin base class: optimizer groups, per-step schedules, EMA timing, logging.

The model contract: a method subclasses :class:`SSLMethod`, declares its student in
``build_student(backbone)`` (a ``ModuleDict`` with at least ``backbone``; the entries are
the networks its step calls), calls ``init_networks(backbone)`` at the end of its
``__init__``, and implements ``compute_loss(batch, step)`` returning ``(loss, logs)``.
The base builds the EMA teacher from the student (``uses_teacher``), moves it after every
real optimizer step, and shards student and teacher with the same policy in
``configure_model`` when the strategy is FSDP2 (:mod:`ssl_zoo.parallel.fsdp`); under DDP or
one process ``configure_model`` does nothing. Everything else (what to log, when lr /
weight decay change, when the teacher moves) lives here once, so methods stay short and
comparable.

What callbacks may read of a step (the health monitor, the online probe) is the
``step_signals`` contract below: ``compute_loss`` records detached tensors it has
computed anyway, so no callback re-runs a forward and nothing syncs with the host unless
a callback reads them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import lightning as L
import torch
from torch import nn

from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.ema import ema_update, make_teacher, set_teacher_mode
from ssl_zoo.optim.param_groups import (
    OPTIMIZERS,
    build_optimizer,
    build_param_groups,
    clip_grad_norm_per_module,
    clip_grad_norm_per_parameter,
    clip_grad_norm_total,
)
from ssl_zoo.optim.run_plan import RunLength, plan_run_length
from ssl_zoo.optim.schedules import cosine_schedule
from ssl_zoo.weights.load import CONFIG_KEY


class SSLMethod(L.LightningModule):
    """Shared training plumbing.

    Args:
        optimizer: ``adamw`` (DINO, DINOv2), ``lars`` or ``sgd`` (BYOL).
        base_lr: learning rate before batch-size scaling (see lr_scaling).
        lr_scaling: peak lr from the global batch: ``linear_256`` = base_lr * batch / 256
            (Goyal et al. 2017; DINO, BYOL), ``sqrt_1024`` = base_lr * sqrt(batch / 1024)
            (DINOv2), ``none`` = base_lr.
        min_lr: final lr of the cosine decay.
        warmup_epochs: linear lr warm-up length (fractions allowed).
        iterations_per_epoch: what an "epoch" is for every schedule length given in
            epochs (warm-ups, last-layer freeze): ``null`` = one pass over the data;
            DINOv2 counts 1250 iterations (``OFFICIAL_EPOCH_LENGTH``) whatever the data
            and batch. The run length itself is the trainer's (max_steps / max_epochs).
        weight_decay, weight_decay_end: cosine weight-decay schedule (DINO: 0.04 -> 0.4).
        grad_clip: gradient-norm threshold (0 disables).
        grad_clip_mode: ``per_parameter`` (DINO ``utils.clip_gradients``: each tensor's
            gradient to norm <= grad_clip), ``per_module`` (DINOv2: each student
            submodule, e.g. backbone and heads, clipped as a whole) or ``global`` (one
            norm over every parameter).
        freeze_last_layer_epochs: lr of the head's last layer is 0 for this long (DINO).
        layer_decay, patch_embed_lr_mult: ViT lr multipliers (DINOv2); 1.0 disables.
        betas, momentum: optimizer constants (AdamW betas; SGD/LARS momentum).
        momentum_teacher: EMA momentum of the teacher at step 0, raised to 1 with a cosine
            (DINO, BYOL 0.996; DINOv2 0.992).
        fp32_teacher: under bf16 autocast, run the teacher's forward in fp32 (no gradient,
            so only its forward pays). For teachers whose targets are sharpened (DINO
            family, T=0.04): bf16's 8-bit mantissa is ~0.004 on a cosine, ~0.1 on a
            sharpened logit; the references train in fp16 (11 bits). docs/precision.md.
    """

    #: Keys of ``step_signals``, filled by every ``compute_loss`` (detached, this step's
    #: batch, this process's rows; V global views of B images, view-major):
    STEP_SIGNALS = {
        "student_features": "(V*B, D) student backbone CLS features of the global crops (every method)",
        "eval_features": "(V*B, D) the same crops through eval_backbone, the one kNN reads (every method)",
        "teacher_probs": "(V*B, K) teacher target probabilities of the global crops (DINO, DINOv2)",
        "center": "(1, K) softmax-centering vector after this step's update (DINO family with centering)",
    }

    backbone_param_prefix = "student.backbone."
    # DINO's reference drops the last layer's gradients while it is frozen
    # (utils.cancel_gradients_last_layer), so AdamW keeps no moments for it; DINOv2's only
    # sets its lr to 0. A method sets True to follow DINO.
    cancel_frozen_last_layer_grads = False

    #: An EMA teacher, a copy of the student built by ``init_networks`` (False: supervised).
    uses_teacher = True

    def __init__(
        self,
        optimizer: str = "adamw",
        base_lr: float = 5e-4,
        lr_scaling: str = "linear_256",
        min_lr: float = 1e-6,
        warmup_epochs: float = 10.0,
        iterations_per_epoch: int | None = None,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        grad_clip: float = 3.0,
        grad_clip_mode: str = "global",
        freeze_last_layer_epochs: float = 1.0,
        layer_decay: float = 1.0,
        patch_embed_lr_mult: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        fp32_teacher: bool = False,
    ) -> None:
        super().__init__()
        _check("momentum_teacher", 0 <= momentum_teacher <= 1, momentum_teacher, "in [0, 1]")
        _check("optimizer", str(optimizer).lower() in OPTIMIZERS, repr(optimizer), f"one of {', '.join(OPTIMIZERS)}")
        _check("base_lr", base_lr > 0, base_lr, "> 0")
        _check("lr_scaling", lr_scaling in _LR_SCALING, lr_scaling, f"one of {sorted(_LR_SCALING)}")
        _check("min_lr", min_lr >= 0, min_lr, ">= 0")
        _check("warmup_epochs", warmup_epochs >= 0, warmup_epochs, ">= 0")
        _check("weight_decay", weight_decay >= 0, weight_decay, ">= 0")
        _check("weight_decay_end", weight_decay_end >= 0, weight_decay_end, ">= 0")
        _check("grad_clip", grad_clip >= 0, grad_clip, ">= 0 (0 disables clipping)")
        _check("grad_clip_mode", grad_clip_mode in _CLIP_MODES, grad_clip_mode, f"one of {_CLIP_MODES}")
        _check(
            "iterations_per_epoch",
            iterations_per_epoch is None or (isinstance(iterations_per_epoch, int) and iterations_per_epoch >= 1),
            iterations_per_epoch,
            "an int >= 1, or null for one pass over the data",
        )
        _check("freeze_last_layer_epochs", freeze_last_layer_epochs >= 0, freeze_last_layer_epochs, ">= 0")
        _check("layer_decay", 0 < layer_decay <= 1, layer_decay, "in (0, 1]")
        _check("patch_embed_lr_mult", patch_embed_lr_mult >= 0, patch_embed_lr_mult, ">= 0")
        self.optimizer_name = optimizer
        self.base_lr = base_lr
        self.lr_scaling = lr_scaling
        self.min_lr = min_lr
        self.warmup_epochs = warmup_epochs
        self.iterations_per_epoch = iterations_per_epoch
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay_end
        self.grad_clip = grad_clip
        self.grad_clip_mode = grad_clip_mode
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.layer_decay = layer_decay
        self.patch_embed_lr_mult = patch_embed_lr_mult
        self.betas = tuple(betas)
        self.momentum = momentum
        self.momentum_teacher = momentum_teacher
        self.fp32_teacher = bool(fp32_teacher)
        self.student: nn.ModuleDict | None = None
        self.teacher: nn.ModuleDict | None = None
        self.sharded = False  # set by configure_model under FSDP2
        # See STEP_SIGNALS; references only (no copy), replaced every step.
        self.step_signals: dict[str, torch.Tensor] = {}
        # The resolved run config, set by train() and saved in every checkpoint so that
        # eval / viz / export can rebuild the backbone from the file alone.
        self.run_config: dict[str, Any] | None = None
        # Set by `setup_schedules` once the trainer knows the data and the devices.
        self.total_steps = 1
        self.steps_per_epoch = 1
        self.peak_lr = base_lr
        # The non-finite guard's contract (callbacks/nonfinite.py): the step's loss and its
        # terms, and a flag that turns the next EMA update into a no-op when the step was skipped.
        self.last_loss: torch.Tensor | None = None
        self.last_loss_terms: dict[str, torch.Tensor] = {}  # the ``*_loss`` entries of the step's logs
        self.skip_teacher_update = False

    # --- what a method provides -------------------------------------------------------

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        """The student: ``backbone`` plus the networks the method trains and the teacher
        copies (heads, projector), as a ``ModuleDict`` whose entries ``compute_loss``
        calls. Trainable modules outside it (BYOL's predictor) are the student's alone."""
        raise NotImplementedError

    def init_networks(self, backbone: Backbone) -> None:
        """Build the student (``build_student``) and, with ``uses_teacher``, the teacher
        as its frozen copy. Called once, at the end of a method's ``__init__``."""
        student = self.build_student(backbone)
        name = type(self).__name__
        if not isinstance(student, nn.ModuleDict) or not isinstance(student._modules.get("backbone"), Backbone):
            raise TypeError(f"{name}.build_student must return an nn.ModuleDict with a Backbone under 'backbone'")
        self.student = student
        self.teacher = make_teacher(student) if self.uses_teacher else None

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def record_signals(self, **tensors: torch.Tensor) -> None:
        """Store detached ``STEP_SIGNALS`` of this step for the callbacks."""
        unknown = tensors.keys() - self.STEP_SIGNALS.keys()
        if unknown:
            raise KeyError(f"not step signals: {sorted(unknown)} (declare them in SSLMethod.STEP_SIGNALS)")
        self.step_signals.update({name: t.detach() for name, t in tensors.items()})

    def teacher_precision(self) -> contextlib.AbstractContextManager:
        """Enter around the teacher's forward: autocast off under bf16 autocast when
        ``fp32_teacher`` (the parameters are fp32 masters, so the forward is fp32)."""
        device = self.device.type
        if self.fp32_teacher and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
            return torch.autocast(device, enabled=False)
        return contextlib.nullcontext()

    def update_teacher(self, step: int) -> None:
        """Called once after every real optimizer step (never on accumulation steps)."""
        if self.teacher is not None:
            ema_update(self.teacher, self.student, self.momentum_at(step))

    def check_views(self, n_global: int, n_local: int) -> None:
        """Raise ValueError if the augmentation's crop counts don't suit the method."""

    @property
    def eval_backbone(self) -> nn.Module:
        """The backbone whose CLS features the kNN evaluation reads."""
        return self.student["backbone"]

    # --- schedules ------------------------------------------------------------------------

    def setup_schedules(self, total_steps: int, steps_per_epoch: int, global_batch_size: int) -> None:
        """Size every schedule: ``total_steps`` optimizer steps, epochs of
        ``steps_per_epoch`` steps, lr scaled from ``global_batch_size``."""
        self.total_steps = max(int(total_steps), 1)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.peak_lr = self.base_lr * _LR_SCALING[self.lr_scaling](global_batch_size)
        self.warmup_steps = min(self.epochs_to_steps(self.warmup_epochs), self.total_steps)
        self.freeze_last_layer_steps = min(self.epochs_to_steps(self.freeze_last_layer_epochs), self.total_steps)

    def plan_schedules(self, run: RunLength, global_batch_size: int) -> None:
        """What the trainer does at the start of fit, given the run length: an epoch is
        ``iterations_per_epoch`` if set, else one pass over the data."""
        self.setup_schedules(run.total_steps, self.iterations_per_epoch or run.steps_per_data_epoch, global_batch_size)

    def epochs_to_steps(self, epochs: float) -> int:
        return int(math.ceil(epochs * self.steps_per_epoch))

    def lr_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.peak_lr, self.min_lr, warmup_steps=self.warmup_steps)

    def wd_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def last_layer_lr_at(self, step: int) -> float:
        return 0.0 if step < self.freeze_last_layer_steps else self.lr_at(step)

    def momentum_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.momentum_teacher, 1.0)

    def on_train_start(self) -> None:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches
        per_device = getattr(trainer.datamodule, "batch_size", None)
        if per_device is None:
            raise RuntimeError("the datamodule must expose batch_size (per device)")
        run = plan_run_length(
            trainer.num_training_batches, accumulate, max_epochs=trainer.max_epochs, max_steps=trainer.max_steps
        )
        self.plan_schedules(run, global_batch_size=per_device * trainer.world_size * accumulate)

    # --- Lightning hooks --------------------------------------------------------------------

    def configure_model(self) -> None:
        """Under FSDP2 (:class:`ssl_zoo.parallel.fsdp.FSDP2Strategy`), shard student, teacher and
        the other trainable modules with one policy; under any other strategy, nothing.
        Lightning calls this before the optimizer is built, so it sees the sharded
        parameters."""
        if self.student is None:
            raise TypeError(f"{type(self).__name__}.__init__ must call self.init_networks(backbone)")
        from ssl_zoo.parallel.fsdp import FSDP2Strategy, shard_method

        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDP2Strategy) and not self.sharded:
            shard_method(self, strategy)
            self.sharded = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        num_layers = len(getattr(self.student["backbone"].model, "blocks", []))
        groups = build_param_groups(
            self.named_parameters(),
            layer_decay=self.layer_decay,
            num_layers=num_layers,
            patch_embed_lr_mult=self.patch_embed_lr_mult,
            backbone_prefix=self.backbone_param_prefix,
        )
        extra = {"betas": self.betas} if self.optimizer_name.lower() == "adamw" else {"momentum": self.momentum}
        return build_optimizer(self.optimizer_name, groups, lr=self.base_lr, **extra)

    def apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        """Set every parameter group's lr and weight decay for ``step``; returns the
        backbone's base (lr, wd), before multipliers."""
        lr, wd, last_layer_lr = self.lr_at(step), self.wd_at(step), self.last_layer_lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
            group["weight_decay"] = wd * group["wd_multiplier"]
        return lr, wd

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        step = self.trainer.global_step
        lr, wd = self.apply_schedules(self.trainer.optimizers[0], step)
        self.step_signals = {}  # never a previous step's tensors
        loss, logs = self.compute_loss(batch, step)
        self.last_loss = loss.detach()
        self.last_loss_terms = {k: v for k, v in logs.items() if k.endswith("_loss") and torch.is_tensor(v)}
        batch_size = batch["global_crops"].shape[0]
        metrics = {"train/loss": loss.detach(), "train/lr": lr, "train/wd": wd}
        metrics.update({f"train/{k}": v for k, v in logs.items()})
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.cancel_frozen_last_layer_grads and self.trainer.global_step < self.freeze_last_layer_steps:
            for group in optimizer.param_groups:
                if group["is_last_layer"]:
                    for param in group["params"]:
                        param.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        if not clip:
            return
        if self.grad_clip_mode == "global":
            clip_grad_norm_total(self.parameters(), clip)
        elif self.grad_clip_mode == "per_parameter":
            clip_grad_norm_per_parameter(self.parameters(), clip)
        else:
            clip_grad_norm_per_module(self.clip_modules(), clip)

    def clip_modules(self) -> list[nn.Module]:
        """The units of ``per_module`` clipping: each student submodule (backbone, heads),
        plus the method's other trainable modules (e.g. BYOL's predictor)."""
        return [*self.student.values(), *self.student_only_modules()]

    def student_only_modules(self) -> list[nn.Module]:
        """Trainable modules outside the student (BYOL's predictor): trained, clipped and
        sharded like the student's, never copied into the teacher."""
        return [m for name, m in self.named_children() if name not in ("student", "teacher")
                and any(p.requires_grad for p in m.parameters())]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Lightning calls this only for real optimizer steps (gradient accumulation: every
        # N batches), and that is when the teacher may follow. Here, not in
        # on_train_batch_end: that hook runs after the callbacks', so a checkpoint saved
        # by ModelCheckpoint at step k held the student of step k with the teacher of k-1,
        # and a resume from it lost one EMA update.
        if self.skip_teacher_update:
            self.skip_teacher_update = False  # the student did not move: neither does the teacher
        else:
            # global_step still counts the steps before this one (Lightning increments it
            # after this hook returns): it is this step's index.
            self.update_teacher(self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config

    def train(self, mode: bool = True) -> SSLMethod:
        super().train(mode)
        # Lightning calls .train() on the whole module each epoch: keep the teacher frozen.
        if mode and self.teacher is not None:
            set_teacher_mode(self.teacher)
        return self


_CLIP_MODES = ("per_parameter", "per_module", "global")

_LR_SCALING = {
    "linear_256": lambda batch: batch / 256,
    "sqrt_1024": lambda batch: math.sqrt(batch / 1024),
    "none": lambda batch: 1.0,
}


def _check(key: str, ok: bool, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"method.{key} must be {expected}, got {value}")
