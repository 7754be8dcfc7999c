"""The Hydra app behind `ssl-zoo train`.

A file of its own so that it can be re-run as a script: Lightning's DDP launcher starts
each extra process as `python <sys.argv[0]> <overrides>`, and `ssl-zoo train` points
sys.argv[0] here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ssl_zoo import signals

# First, before the slow imports: a stop signal from now on is kept, and the run saves at
# its first safe point (ssl_zoo/signals.py). Also in each extra DDP process, which runs
# this file as a script.
signals.hold()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ssl_zoo.config import CONFIG_DIR  # noqa: E402


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from ssl_zoo.errors import UserError, one_line
    from ssl_zoo.train import train

    try:
        summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A mistake the message explains: no traceback (HYDRA_FULL_ERROR=1 or
        # `ssl-zoo --debug train ...` shows it). Also into the run's log file.
        logging.getLogger("ssl_zoo").debug("stopped: %s", err, exc_info=True)
        print(f"ssl-zoo train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    return summary["knn_top1_end"]


if __name__ == "__main__":
    main()
