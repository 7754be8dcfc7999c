"""What the key=value tools (`ssl-zoo eval`, `ssl-zoo viz`) share: compose a small Hydra
config from ``conf_tools/<name>.yaml`` with the user's overrides, print its keys as help,
and turn bad input into one line on stderr.

The tool configs live apart from the train config directory: there, a key such as
``logger`` or ``data`` would be taken for the train config group of that name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

TOOLS_CONFIG_DIR = str(Path(__file__).resolve().parent / "conf_tools")


class UsageError(ValueError):
    """A bad command line: unknown key, malformed override."""


def compose_tool(name: str, overrides: list[str]) -> DictConfig:
    """conf_tools/<name>.yaml with Hydra-style key=value overrides applied."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for arg in overrides:
        if "=" not in arg:
            raise UsageError(f"'{arg}' is not key=value (e.g. ckpt=outputs/<run>/checkpoints/last.ckpt); keys: --help")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=TOOLS_CONFIG_DIR, version_base="1.3"):
            return compose(name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"{first} (the keys are listed by --help)") from None
    finally:
        GlobalHydra.instance().clear()


def keys_help(name: str) -> str:
    """The tool's config file, comments included: every key, its default and meaning."""
    return (Path(TOOLS_CONFIG_DIR) / f"{name}.yaml").read_text()


def fail(prog: str, err: BaseException) -> int:
    """Print one line naming the problem; re-raise with HYDRA_FULL_ERROR=1 (full trace)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 1
