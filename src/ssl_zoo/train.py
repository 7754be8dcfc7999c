"""Build everything from the composed config, check it, then fit.

Order matters for the user: every constructor validates its arguments and every
cross-group rule is checked *before* the trainer starts, so a typo costs seconds, not a
run. The run directory (Hydra's) receives checkpoints/, the logger's files and
summary.json, a stable contract for scripts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shlex
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from ssl_zoo import run_failure, signals
from ssl_zoo.callbacks.protocol import RunContext, configure_run, merge_reports
from ssl_zoo.callbacks.resume import ResumeState
from ssl_zoo.console import say
from ssl_zoo.data.collate import MultiCropCollate
from ssl_zoo.data.datamodule import check_batch_sizes, constructor_config
from ssl_zoo.errors import ConfigError, UserError
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.optim.run_plan import RunLengthError, RunPlan, plan_run_length
from ssl_zoo.optim.schedules import describe_lr_scaling
from ssl_zoo.parallel.cluster import check_launch
from ssl_zoo.parallel.fsdp import check_shardable
from ssl_zoo.parallel.precision import check_precision
from ssl_zoo.weights.initial import architecture_node, load_initial_weights
from ssl_zoo.weights.load import check_resumable, newest_checkpoint

log = logging.getLogger("ssl_zoo")


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate(node) with constructor errors reported as ConfigError naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InterpolationResolutionError as err:  # a resolver's own message (config.py), not OmegaConf's
        raise ConfigError(str(err.__cause__ or err).split("\n")[0]) from err
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        message = str(cause)
        # Constructors already name their key (method.teacher_temp ...): don't repeat it.
        raise ConfigError(message if message.startswith((f"{key}.", f"{key}=")) else f"{key}: {message}") from cause


def _build_collate(cfg: DictConfig, backbone, method) -> MultiCropCollate:
    """The batch collate; with augmentation.masking, its iBOT mask generator on the patch
    grid of the global crops, which the built backbone gives."""
    masking = cfg.augmentation.get("masking")
    if method.uses_masks and masking is None:
        raise ConfigError(
            f"method {_target_name(cfg.method)} with backbone={backbone.model_name} masks patch tokens "
            "(iBOT) but augmentation.masking is null: remove that override, or set method.ibot_weight=0"
        )
    generator = None
    if masking is not None:
        grid = _mask_grid(cfg, backbone)
        generator = build(masking.generator, "augmentation.masking.generator", grid_size=grid)
    return build(cfg.augmentation.collate, "augmentation.collate", mask_generator=generator)


def _mask_grid(cfg: DictConfig, backbone) -> tuple[int, int]:
    """The patch grid of the global crops, where iBOT masks are drawn."""
    grid = backbone.patch_grid(cfg.augmentation.transform.global_size)
    if grid is None:
        raise ConfigError(
            f"augmentation.masking draws iBOT masks, but backbone={backbone.model_name} has no patch tokens: choose a "
            "ViT backbone (e.g. backbone=vit_tiny), or for DINOv2 on a CNN set augmentation.masking=null "
            "method.ibot_weight=0"
        )
    given = cfg.augmentation.masking.generator.get("grid_size")
    if given is not None and tuple(given if isinstance(given, Sequence) else (given, given)) != grid:
        raise ConfigError(
            f"augmentation.masking.generator.grid_size={given} but the global crops have {grid[0]}x{grid[1]} "
            f"patches of backbone={backbone.model_name}: remove that override (the grid comes from the backbone)"
        )
    return grid


def _check_crop_sizes(cfg: DictConfig, backbone) -> None:
    if backbone.patch_size is None:
        return
    transform = cfg.augmentation.transform
    sizes = {"augmentation.transform.global_size": transform.global_size}
    if transform.n_local > 0:
        sizes["augmentation.transform.local_size"] = transform.local_size
    for key, size in sizes.items():
        if size % backbone.patch_size:
            raise ConfigError(
                f"{key}={size} is not divisible by the patch size {backbone.patch_size} of "
                f"backbone={backbone.model_name}: use a multiple of {backbone.patch_size}"
            )


def build_backbone(cfg: DictConfig):
    """The configured Backbone with its initial weights (``backbone.init_from``, loaded
    into the built network: ``ssl_zoo.weights.initial``)."""
    backbone = build(architecture_node(cfg.backbone), "backbone")
    load_initial_weights(backbone, cfg.backbone)
    return backbone


def build_method(cfg: DictConfig, backbone=None):
    """The configured method around ``backbone`` (built from cfg.backbone if None), with
    the run's optimizer recipe (cfg.optim) injected."""
    _check_target_init(cfg)
    backbone = build_backbone(cfg) if backbone is None else backbone
    method = build(cfg.method, "method", backbone=backbone, optim=build(cfg.optim, "optim"))
    if not isinstance(method, SSLMethod):  # train and the callbacks read its declared attributes
        raise ConfigError(
            f"method._target_={cfg.method._target_} builds a {type(method).__name__}, not an "
            "ssl_zoo.methods.base.SSLMethod: subclass SSLMethod (see methods/dino.py)"
        )
    return method


def _check_target_init(cfg: DictConfig) -> None:
    if cfg.method.get("target_init") == "independent" and cfg.backbone.get("init_from"):
        raise ConfigError(
            f"method.target_init=independent would give the target network fresh random weights, but "
            f"backbone.init_from={cfg.backbone.init_from} initialises the online one from weights: "
            "keep method.target_init=copy to start both from those weights"
        )


def build_all(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate and cross-check datamodule, method, callbacks, logger and trainer."""
    _check_target_init(cfg)  # before the weights are read
    backbone = build_backbone(cfg)
    method = build_method(cfg, backbone)
    transform_cfg = cfg.augmentation.transform
    try:
        method.check_views(transform_cfg.n_global, transform_cfg.n_local)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    _check_crop_sizes(cfg, backbone)
    datamodule = build(
        constructor_config(cfg.data),
        "data",
        train_transform=build(transform_cfg, "augmentation.transform"),
        eval_transform=build(cfg.augmentation.eval_transform, "augmentation.eval_transform"),
        collate=_build_collate(cfg, backbone, method),
        seed=cfg.seed,
    )
    callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node is not None]
    logger = build(cfg.logger, "logger") if cfg.get("logger") is not None else False
    trainer = build(sync_batchnorm_on_any_device(cfg.trainer), "trainer", callbacks=callbacks, logger=logger)
    check_shardable(trainer.strategy, method)
    global_batch = check_batch_sizes(datamodule, trainer)
    datamodule.setup("fit")  # data errors (missing root, empty set) surface before training
    method.plan_run(plan_run(datamodule, trainer, global_batch, epochs_of_images=method.schedule.epochs_of_images))
    for notice in reference_notices(cfg, method, global_batch, trainer.num_devices, trainer.num_nodes):
        say(notice)
    if method.schedule.epochs_of_images and trainer.max_epochs not in (None, -1):
        # Epochs counted in images (BYOL) end mid-pass: Lightning stops on the step count.
        trainer.fit_loop.epoch_loop.max_steps = method.total_steps
        trainer.fit_loop.max_epochs = -1
    return {"method": method, "datamodule": datamodule, "trainer": trainer, "callbacks": callbacks}


def reference_notices(cfg: DictConfig, method: SSLMethod, global_batch: int, devices: int, nodes: int) -> list[str]:
    """What a paper preset's run does differently from its reference run (``cfg.reference``):
    the global batch, with the lr it scales to, and the precision. Said once at start."""
    reference = cfg.get("reference")
    if not reference:
        return []
    notices = []
    expected = int(reference.global_batch_size)
    if global_batch != expected:
        notices.append(
            f"experiment={reference.name}: global batch {global_batch} (data.batch_size {cfg.data.batch_size} x "
            f"{devices} device(s) x {nodes} node(s) x {cfg.trainer.get('accumulate_grad_batches', 1)} "
            f"accumulated), the reference's is {expected} "
            f"({reference.layout}). Peak lr: {describe_lr_scaling(method.schedule, global_batch)}; at {expected} it "
            f"would be {describe_lr_scaling(method.schedule, expected).rsplit(' = ', 1)[1]}. To train the reference "
            "recipe, set data.batch_size, trainer.devices and trainer.num_nodes so that their product is "
            f"{expected}"
        )
    precision, reference_precision = str(cfg.trainer.get("precision")), str(reference.get("precision"))
    if reference.get("precision") and precision != reference_precision:
        notices.append(f"experiment={reference.name}: trainer.precision={precision}, the reference trains in "
                       f"{reference_precision}")
    return notices


def sync_batchnorm_on_any_device(trainer_cfg: DictConfig) -> DictConfig:
    """``trainer.sync_batchnorm=true`` on any accelerator: torch's SyncBatchNorm (the
    Trainer flag) runs on CUDA only, so anywhere else (CPU + gloo, the tested path) the
    trainer gets ssl_zoo's SyncBatchNorm plugin instead. Both normalise with the statistics
    of the global batch; only the kernel differs. Returns a copy, ``trainer_cfg`` is kept."""
    if not trainer_cfg.get("sync_batchnorm", False):
        return trainer_cfg
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return trainer_cfg
    node = copy.deepcopy(trainer_cfg)  # keeps its parent: interpolations still resolve
    with open_dict(node):
        node.sync_batchnorm = False  # Lightning refuses the flag together with another LayerSync
        plugins = list(node.get("plugins") or [])
        node.plugins = [*plugins, {"_target_": "ssl_zoo.parallel.layer_sync.SyncBatchNormLayerSync"}]
    return node


def plan_run(datamodule, trainer: L.Trainer, global_batch_size: int, epochs_of_images: bool = False) -> RunPlan:
    """The run plan (global batch, optimizer steps, steps per pass over the data), made
    once before training; a ConfigError when trainer.max_steps / max_epochs give no run
    or two different ones (the run would stop at the shorter and the schedules would not fit)."""
    world = int(trainer.num_devices) * int(trainer.num_nodes)
    batches = datamodule.batches_per_epoch(world)
    # trainer.limit_train_batches (and fast_dev_run, which sets it) shortens every epoch, as
    # Lightning counts it: an int caps the batches, a float keeps that fraction.
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float) and limit < 1.0 and math.isfinite(batches):
        batches = int(batches * limit)
    try:
        return plan_run_length(
            batches, trainer.accumulate_grad_batches, trainer.max_epochs,
            trainer.max_steps, global_batch_size=global_batch_size,
            images_per_epoch=datamodule.images_per_epoch(), epochs_of_images=epochs_of_images,
        )
    except RunLengthError as err:
        raise ConfigError(str(err)) from None


def check_environment(cfg: DictConfig) -> None:
    """Mistakes outside the method/data configs, caught before anything is built."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an int in [0, 2**32), got {seed!r}")
    logger = cfg.get("logger")
    if logger is not None and str(logger.get("_target_", "")).endswith("WandbLogger") and not logger.get("offline", False):
        if not _wandb_credentials():
            raise ConfigError(
                "logger.offline=false logs to W&B online, but no W&B credentials were found (no WANDB_API_KEY, "
                "no `wandb login` entry in ~/.netrc): run `wandb login`, set WANDB_API_KEY, or keep "
                "logger.offline=true and `wandb sync` the run later"
            )


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        hosts = netrc.netrc(path).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return base in hosts


def run_config_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers, without Hydra's own ``hydra`` node
    (present when composed outside the CLI; its sweep keys only resolve inside a job).
    Values under secret-looking keys (api_key, token, password, secret) are redacted: this
    is what checkpoints and loggers store."""
    return redact_secrets(
        {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
         for key in cfg if key != "hydra"}
    )


SECRET_KEY = re.compile(r"api_?key|token|secret|password|passwd|credential", re.IGNORECASE)


def redact_secrets(value: Any) -> Any:
    """A copy of nested dicts/lists with every value under a secret-looking key replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) and v is not None else redact_secrets(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


def _target_name(node: DictConfig) -> str:
    return str(node._target_).rsplit(".", 1)[-1]


def _silence_expected_warnings() -> None:
    """Warnings every run would print that say nothing about this run."""
    # The EMA teacher is frozen in eval mode on purpose (Lightning warns about any module
    # in eval mode when fit starts).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Map-style data resumes mid-epoch exactly (EpochSampler + callbacks/resume.py); for
    # streamed data the resume callback says itself that it does not.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # Lightning's own use of a torch pytree API that torch deprecated.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # FSDP2 warns when a wrapped module returns a view, in case the caller modifies it in
    # place; no method modifies a backbone's or head's output in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    # Lightning's advertisements ("Tip: ... try installing litlogger / litmodels").
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropTips())


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the configured method and write ``run_dir/summary.json``; returns the summary."""
    try:
        return _train(cfg, run_dir)
    finally:
        signals.release()  # in a process that goes on (not the CLI's): the handlers it had


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    _silence_expected_warnings()
    check_environment(cfg)
    check_launch()  # torchrun / srun processes need one run directory
    precision = check_precision(cfg)  # before the build: Lightning reads the resolved value
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    parts = build_all(cfg)
    trainer: L.Trainer = parts["trainer"]
    datamodule = parts["datamodule"]
    if not any(isinstance(cb, ResumeState) for cb in parts["callbacks"]):
        signals.keep_only([])  # callbacks.resume=null: the signals keep their default actions
    ckpt_path = resume_checkpoint(cfg, trainer)
    if ckpt_path:
        check_resumable(ckpt_path, parts["method"], cfg.backbone.model_name)
    context = RunContext(run_dir=run_dir, auto_precision=precision["source"] == "auto",
                         resume_command=resume_command(run_dir))
    configure_run(parts["callbacks"], context)
    parts["method"].run_config = run_config_container(cfg)
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(parts["method"].run_config)
    try:
        trainer.fit(parts["method"], datamodule=datamodule, ckpt_path=ckpt_path)
    except (UserError, OSError) as err:
        if not run_failure.is_mid_run_failure(err) or trainer.global_step == 0:
            raise  # before the first step nothing is lost; other errors say what was kept
        raise _stopped(err, trainer, parts["callbacks"], run_dir) from err

    checkpoint = trainer.checkpoint_callback
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint.last_model_path or checkpoint.best_model_path or None
    report = getattr(datamodule, "bad_image_report", None)
    bad_images = report() if callable(report) else {"count": 0, "examples": []}
    run_facts = {
        "method": _target_name(cfg.method),
        "backbone": cfg.backbone.model_name,
        "data": _target_name(cfg.data.train_set),
        "precision": precision,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "wall_time_sec": time.perf_counter() - started,
        "checkpoint": os.path.abspath(ckpt) if ckpt else None,
        "bad_images": bad_images["count"],
        "bad_image_examples": bad_images["examples"],
        "run_dir": str(run_dir.resolve()),
    }
    # Each callback reports its own keys (callbacks/protocol.py); those of a callback that
    # is off keep their defaults, so the file has one layout.
    summary = merge_reports(run_facts, parts["callbacks"])
    if trainer.is_global_zero:
        path = run_dir / "summary.json"
        try:
            path.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as err:
            if not run_failure.is_no_space(err):
                raise
            raise run_failure.DiskFullError(
                f"{run_failure.disk_full(err, path=str(path))}. Training finished at step {summary['steps']}; "
                f"its checkpoint {summary['checkpoint']} is complete (summary.json is the run's report only)"
            ) from err
        print_summary(summary)
    return summary


def _stopped(err: BaseException, trainer: L.Trainer, callbacks: list, run_dir: Path) -> UserError:
    """The one-line error of a run that failed after training began: the cause and what was kept."""
    saved = next((cb.saved_on_error for cb in callbacks if isinstance(cb, ResumeState) and cb.saved_on_error), None)
    checkpoint = trainer.checkpoint_callback
    newest = getattr(checkpoint, "last_model_path", None) or None
    if newest and not os.path.exists(newest):
        newest = None
    return run_failure.stopped(err, saved, newest, run_dir)


def resume_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """The checkpoint this run continues from: ``ckpt_path``, or with ``resume=auto`` the
    newest complete one in the run's checkpoint directory (None: start fresh)."""
    resume = cfg.get("resume")
    if resume in (None, False):
        return cfg.get("ckpt_path")
    if resume != "auto":
        raise ConfigError(f"resume={resume!r}: use resume=auto (or null), or ckpt_path=<file> for a given checkpoint")
    if cfg.get("ckpt_path"):
        raise ConfigError("resume=auto and ckpt_path are both set: keep one (ckpt_path names the checkpoint itself)")
    checkpoint = trainer.checkpoint_callback
    directory = Path(checkpoint.dirpath) if checkpoint is not None and checkpoint.dirpath else None
    if directory is None:
        raise ConfigError("resume=auto needs callbacks.checkpoint (it looks for checkpoints in its dirpath)")
    path, skipped = newest_checkpoint(directory)
    for entry in skipped:
        say("resume=auto: skipped unreadable checkpoint %s in %s", entry, directory)
    if path is None:
        say("resume=auto: no checkpoint in %s, starting fresh", directory)
        return None
    say("resume=auto: continuing from %s", path)
    return str(path)


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run: its overrides, its run directory, resume=auto."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra job (train() called directly)
        overrides = ["<same overrides>"]
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "ckpt_path", "hydra.run.dir")]
    args = ["ssl-zoo", "train", *keep, f"hydra.run.dir={run_dir.resolve()}", "resume=auto"]
    return " ".join(shlex.quote(a) for a in args)


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    table = Table(title=f"ssl_zoo: {summary['method']} on {summary['data']} ({summary['backbone']})", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths wrap whole instead of ending in an ellipsis
    if summary["knn_k"] is not None:
        # the steps come from the history: a resumed run starts later, a preempted one may
        # stop without an evaluation after its first
        history, stopped = summary["knn_history"], summary["steps"]
        if not history:
            result = f"not evaluated (the run stopped at step {stopped})"
        elif len(history) == 1:
            result = (f"step {history[0]['step']}: {pct(history[0]['top1'])} (no evaluation after it: "
                      f"the run stopped at step {stopped})")
        else:
            first, last = history[0], history[-1]
            result = (f"step {first['step']}: {pct(first['top1'])}  ->  step {last['step']}: {pct(last['top1'])}"
                      f"  ({100 * (last['top1'] - first['top1']):+.2f} points)")
        raw = pct(summary["knn_top1_raw_pixels"])
        table.add_row(f"kNN top-1 (k={summary['knn_k']}, T={summary['knn_temperature']})", f"{result}\nraw pixels: {raw}")
    if summary["probe_top1_end"] is not None:
        table.add_row("online linear probe top-1", pct(summary["probe_top1_end"]))
    ips = summary["images_per_sec"]
    table.add_row("training images/s (median)", "n/a" if ips is None else f"{ips:.1f}")
    table.add_row("wall time", f"{summary['wall_time_sec']:.0f} s")
    if summary["bad_images"]:
        table.add_row("bad images skipped", f"{summary['bad_images']} (e.g. {summary['bad_image_examples'][0]})")
    if summary.get("skipped_steps"):
        causes = "; ".join(f"{n} x {c}" for c, n in summary["skipped_step_causes"].items())
        table.add_row("skipped steps", f"{summary['skipped_steps']}: {causes}")
    precision = summary.get("precision") or {}
    if precision.get("fp32_fallback_step") is not None:
        table.add_row("precision", f"{precision['precision']} until step {precision['fp32_fallback_step']}, "
                                   "then 32-true (non-finite gradients)")
    if summary["preempted_at_step"] is not None:
        table.add_row("stopped early", f"preempted at step {summary['preempted_at_step']} (resume below)")
    if summary["stop_reason"]:
        table.add_row("stopped early", summary["stop_reason"])
    elif summary["health_symptoms"]:
        table.add_row("health warnings", ", ".join(summary["health_symptoms"]))
    if summary["learning_curve"]:
        table.add_row("learning curve", summary["learning_curve"])
    table.add_row("checkpoint", str(summary["checkpoint"]))
    table.add_row("summary", f"{summary['run_dir']}/summary.json")
    console = Console()
    console.print(table)
    if summary["checkpoint"] and summary["preempted_at_step"] is None:  # preempted: the command was printed
        console.print(
            "Resume (or train longer) with:\n"
            f"  ssl-zoo train <same overrides> ckpt_path={summary['checkpoint']} trainer.max_steps=<more> "
            "(or trainer.max_epochs=<more>)",
            soft_wrap=True,  # one line per command, so it copies whole
        )
