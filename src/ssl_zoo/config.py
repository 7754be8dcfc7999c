"""Compose the train config outside the CLI (tests, benchmarks, notebooks)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
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


# Hydra's messages for a key the config does not have (override and deletion).
_UNKNOWN_KEY = (re.compile(r"^Could not override '([^']+)'"), re.compile(r"^Could not delete from config\. '([^']+)' does not exist"))


def _unknown_key(err: HydraException) -> str | None:
    """The dotted key of an override that names no key of the config, else None."""
    message = str(err).strip()
    for pattern in _UNKNOWN_KEY:
        match = pattern.match(message)
        # "Could not override" is also what a value of the wrong type gets: only a missing
        # key has no cause or a key error (not in struct) as its cause.
        if match and (err.__cause__ is None or "not in struct" in str(err.__cause__)
                      or type(err.__cause__).__name__ in ("ConfigAttributeError", "ConfigKeyError")):
            return match.group(1)
    return None


def key_paths(node: dict, prefix: str = "") -> list[str]:
    """Every dotted path of a config container: nodes and leaves (not into lists)."""
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(key_paths(value, f"{path}."))
    return paths


def closest_keys(key: str, paths: list[str], n: int = 3) -> list[str]:
    """The paths most like ``key``: those whose last part is close to its last part,
    anywhere in the tree (a key that moved to another node, a typo in a node's name); keys
    of the same node rank first, then by the likeness of the whole path. Only those about
    as close as the best one; Hydra's own keys (_target_) and the key's ancestors are never
    suggested."""
    key = key.lower()
    parent, _, last = key.rpartition(".")
    scores = {}
    for path in paths:
        path_parent, _, path_last = path.lower().rpartition(".")
        if path_last.startswith("_") or key.startswith(f"{path.lower()}."):
            continue
        by_last = difflib.SequenceMatcher(None, last, path_last).ratio()
        if by_last >= 0.75:
            by_path = difflib.SequenceMatcher(None, key, path.lower()).ratio()
            scores[path] = by_last + (0.1 if path_parent == parent else 0.0) + 0.05 * by_path
    if not scores:
        return []
    best = max(scores.values())
    return sorted((p for p, s in scores.items() if s >= best - 0.08), key=lambda p: -scores[p])[:n]


def unknown_key_message(key: str, paths: list[str]) -> str:
    """One line for an override of a key the composed config does not have."""
    close = closest_keys(key, paths)
    if close:
        options = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
        return f"{key} is not a key of this run's config; did you mean {options}?"
    return (f"{key} is not a key of this run's config (`ssl-zoo train --cfg job` prints them; "
            f"+{key}=<value> adds a new key)")


def _composition_error(err: HydraException, overrides: list[str]) -> ConfigError:
    """Hydra's composition error as one line; an unknown key names the closest ones."""
    if isinstance(err, MissingConfigException):  # a group option that does not exist
        return ConfigError(_missing_option_message(err))
    key = _unknown_key(err)
    if key is None:
        first = str(err).strip().splitlines()[0]
        return ConfigError(f"cannot compose the config from these overrides: {first}")
    # The config as it would be without the overrides of unknown keys, to search its keys.
    rest = list(overrides)
    for _ in range(len(overrides)):
        rest = [o for o in rest if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            cfg = compose("train", overrides=rest, return_hydra_config=key.startswith("hydra."))
            break
        except HydraException as again:
            key_again = _unknown_key(again)
            if key_again is None:
                return ConfigError(unknown_key_message(key, []))
            rest = [o for o in rest if o.split("=", 1)[0].lstrip("+~") != key_again]
    else:
        return ConfigError(unknown_key_message(key, []))
    return ConfigError(unknown_key_message(key, key_paths(OmegaConf.to_container(cfg, resolve=False))))


def _compose(overrides: list[str], return_hydra_config: bool = True) -> DictConfig:
    check_moved_keys(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            return compose("train", overrides=overrides, return_hydra_config=return_hydra_config)
        except HydraException as err:
            raise _composition_error(err, overrides) from None


def check_overrides(overrides: list[str]) -> None:
    """ConfigError (one line) if `ssl-zoo train <overrides>` cannot compose its config:
    a moved key, an unknown key (naming the closest ones) or group option (listing them)."""
    try:
        _compose(overrides)
    finally:
        GlobalHydra.instance().clear()


def compose_config(overrides: list[str], run_dir: Path | str) -> DictConfig:
    """The config `ssl-zoo train <overrides>` would run with, its run dir set to run_dir
    (so `${hydra:runtime.output_dir}` resolves)."""
    cfg = _compose(overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
