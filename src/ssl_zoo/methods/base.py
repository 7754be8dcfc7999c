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
from typing import Any

import lightning as L
import torch
from torch import nn

from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.ema import ema_update, make_teacher, set_teacher_mode
from ssl_zoo.optim.recipe import OptimRecipe
from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.optim.schedules import cosine_schedule
from ssl_zoo.weights.atomic import CONFIG_KEY


class SSLMethod(L.LightningModule):
    """Shared training plumbing.

    Args:
        optim: the optimizer, its lr / weight-decay schedule, parameter-group rules and
            gradient clipping (the ``optim`` config node, :class:`ssl_zoo.optim.recipe.OptimRecipe`);
            ``None``: AdamW with the default schedule.
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

    # --- what ssl_zoo.train and the callbacks read: plain attributes, declared here -------

    #: The student masks patch tokens (iBOT): ``ssl_zoo.train`` then requires a collate that
    #: draws masks (``augmentation.masking``). DINOv2 sets it from its config and backbone.
    uses_masks: bool = False
    #: This step's detached tensors, keys of ``STEP_SIGNALS`` (``record_signals``): read by
    #: the health monitor and the online probe (callbacks/health.py, callbacks/probe.py).
    step_signals: dict[str, torch.Tensor]
    #: This step's detached loss and its ``*_loss`` terms: read by the non-finite guard
    #: (callbacks/nonfinite.py), which sets ``skip_teacher_update`` when it skipped the
    #: optimizer step, making the next EMA update a no-op.
    last_loss: torch.Tensor | None
    last_loss_terms: dict[str, torch.Tensor]
    skip_teacher_update: bool

    def __init__(
        self,
        optim: OptimRecipe | None = None,
        momentum_teacher: float = 0.996,
        fp32_teacher: bool = False,
    ) -> None:
        super().__init__()
        _check("momentum_teacher", 0 <= momentum_teacher <= 1, momentum_teacher, "in [0, 1]")
        if optim is not None and not isinstance(optim, OptimRecipe):
            raise TypeError(f"optim must be an ssl_zoo.optim.recipe.OptimRecipe (the optim config node), got {type(optim)}")
        self.optim = optim if optim is not None else OptimRecipe()
        self.momentum_teacher = momentum_teacher
        self.fp32_teacher = bool(fp32_teacher)
        self.student: nn.ModuleDict | None = None
        self.teacher: nn.ModuleDict | None = None
        self.sharded = False  # set by configure_model under FSDP2
        self.step_signals = {}  # references only (no copy), replaced every step
        # The resolved run config, set by train() and saved in every checkpoint so that
        # eval / viz / export can rebuild the backbone from the file alone.
        self.run_config: dict[str, Any] | None = None
        self.last_loss = None
        self.last_loss_terms = {}
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

    def plan_run(self, run: RunPlan) -> None:
        """Size every schedule for the run (``ssl_zoo.train`` plans it once, before fit)."""
        self.optim.plan(run)

    @property
    def schedule(self):
        return self.optim.schedule

    @property
    def total_steps(self) -> int:
        return self.optim.schedule.total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.optim.schedule.steps_per_epoch

    def momentum_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.momentum_teacher, 1.0)

    def on_train_start(self) -> None:
        if not self.optim.schedule.planned:
            raise RuntimeError(
                f"{type(self).__name__}: the run was not planned; call method.plan_run(run_plan) before "
                "trainer.fit (ssl_zoo.train.build_all does)"
            )

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
        backbone = self.student["backbone"]
        return self.optim.build(self.named_parameters(), backbone.layer_id, backbone.num_layers, self.backbone_param_prefix)

    def apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        """Set every parameter group's lr and weight decay for ``step``; returns the
        backbone's base (lr, wd), before multipliers."""
        return self.optim.apply(optimizer, step)

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
        if self.cancel_frozen_last_layer_grads and self.trainer.global_step < self.schedule.freeze_last_layer_steps:
            for group in optimizer.param_groups:
                if group["is_last_layer"]:
                    for param in group["params"]:
                        param.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.optim.clip(self.parameters(), self.clip_modules(), gradient_clip_val)

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


def _check(key: str, ok: bool, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"method.{key} must be {expected}, got {value}")
