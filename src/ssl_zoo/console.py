"""Telling the user what the run decided (resume, preemption), from rank zero."""

from __future__ import annotations

import logging
import sys
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger("ssl_zoo")


def say(message: str, *args: Any) -> None:
    """A decision of the run, in the run's log and on the console, once, from rank 0. Logged
    at INFO: train.yaml also sends ssl_zoo's warnings to the console, which would print it twice."""
    log.info(message, *args)
    if rank_zero_only.rank == 0:
        print(message % args if args else message, file=sys.stderr, flush=True)
