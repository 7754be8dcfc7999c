"""Compose the train config outside the CLI (tests, benchmarks, notebooks)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from ssl_zoo.errors import ConfigError
from ssl_zoo.optim.run_plan import epochs_unless_max_steps

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# The trainer presets' max_epochs: a default that steps aside when max_steps is set
# (ssl_zoo/optim/run_plan.py). Registered on import, before any composition.
if not OmegaConf.has_resolver("epochs_unless_max_steps"):
    OmegaConf.register_new_resolver("epochs_unless_max_steps", epochs_unless_max_steps)


def _fastest_precision(accelerator: str = "auto") -> str:
    # Imported on first use: composing a config (e.g. --help) should not pay for torch.
    from ssl_zoo.parallel.precision import fastest_precision

    return fastest_precision(accelerator)


# The trainer presets' default precision: what this hardware runs fastest (ssl_zoo/parallel/precision.py).
if not OmegaConf.has_resolver("fastest_precision"):
    OmegaConf.register_new_resolver("fastest_precision", _fastest_precision)


def pick_option(key: str, choice: str, options: dict):
    """``${pick:<key>,${<key>},{name: value, ...}}``: the value a named switch selects
    (e.g. augmentation.dinov2_blur), with a one-line error naming the key and its options."""
    if choice not in options:
        raise ValueError(f"{key} must be one of {', '.join(options)}; got {choice!r}")
    return options[choice]


# Named switches in the YAML (a preset's reference behaviour or its alternative).
if not OmegaConf.has_resolver("pick"):
    OmegaConf.register_new_resolver("pick", pick_option)


# Keys that moved when the optimizer became its own config node (optim/): an old override
# gets the new key instead of Hydra's "not in struct".
MOVED_KEYS = {
    **{f"method.{key}": f"optim.schedule.{key}" for key in (
        "base_lr", "lr_scaling", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end",
        "freeze_last_layer_epochs", "iterations_per_epoch")},
    **{f"method.{key}": f"optim.{key}" for key in ("layer_decay", "patch_embed_lr_mult", "grad_clip", "grad_clip_mode")},
    "method.optimizer": "optim/optimizer",
    "method.betas": "optim.optimizer.betas",
    "method.momentum": "optim.optimizer.momentum",
}


def check_moved_keys(overrides: list[str]) -> None:
    """ConfigError naming the new key for an override of a key that moved."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in MOVED_KEYS:
            raise ConfigError(f"{key} moved to {MOVED_KEYS[key]}: write {MOVED_KEYS[key]}={override.split('=', 1)[-1]}")


def _missing_option_message(err: MissingConfigException) -> str:
    """Hydra's message on one line, with the options that do exist."""
    first_line = str(err).strip().splitlines()[0]
    options = f" (available: {', '.join(err.options)})" if err.options else ""
    return f"{first_line}{options}"


def compose_config(overrides: list[str], run_dir: Path | str) -> DictConfig:
    """The config `ssl-zoo train <overrides>` would run with, its run dir set to run_dir
    (so `${hydra:runtime.output_dir}` resolves)."""
    check_moved_keys(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        except MissingConfigException as err:  # a group option that does not exist
            raise ConfigError(_missing_option_message(err)) from None
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
