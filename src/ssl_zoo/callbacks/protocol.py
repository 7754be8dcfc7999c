"""What ``ssl_zoo.train`` and the callbacks know of each other: two optional methods.

- ``summary() -> dict``: the callback's keys of summary.json, values JSON-ready. train
  merges every report over ``SUMMARY_WHEN_OFF``, so a script reading summary.json finds
  the same keys whether a callback is on or off (``callbacks.knn=null``).
- ``configure_run(context)``: what the callback needs to know of the run that only train
  knows (how the precision was chosen, the command that resumes the run), given before fit.

train checks for the methods (the protocols below), never for a callback's class, so a
new callback reports results without train changing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ReportsSummary(Protocol):
    def summary(self) -> dict[str, Any]:
        """This callback's keys of summary.json (called on every process after fit). A dict
        value under a key the summary already holds as a dict is merged into it (the
        non-finite guard's ``precision.fp32_fallback_step``)."""
        ...


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    auto_precision: bool  # trainer.precision was chosen by ssl_zoo, not set by the user
    resume_command: str  # the command that continues this run (resume=auto, same run directory)


@runtime_checkable
class ConfiguresRun(Protocol):
    def configure_run(self, context: RunContext) -> None: ...


# summary.json's keys reported by callbacks, with their values when the callback is off.
# The non-finite guard's keys (skipped_steps, skipped_step_causes, overflow_steps,
# precision.fp32_fallback_step) are absent when it is off, as they always were.
SUMMARY_WHEN_OFF: dict[str, Any] = {
    # callbacks.knn
    "knn_top1_start": None,
    "knn_top1_end": None,
    "knn_top1_raw_pixels": None,
    "knn_k": None,
    "knn_temperature": None,
    "knn_history": [],
    # callbacks.probe
    "probe_top1_end": None,
    # callbacks.curve
    "learning_curve": None,
    # callbacks.throughput
    "images_per_sec": None,
    # callbacks.health: why the run ended before its planned length (null: it ran to the end)
    "stop_reason": None,
    "health_symptoms": {},
    # callbacks.resume
    "preempted_at_step": None,
}


def configure_run(callbacks: Iterable[Any], context: RunContext) -> None:
    """Give ``context`` to every callback that declares ``configure_run``."""
    for callback in callbacks:
        if isinstance(callback, ConfiguresRun):
            callback.configure_run(context)


def merge_reports(summary: dict[str, Any], callbacks: Iterable[Any]) -> dict[str, Any]:
    """``summary`` (the run's own keys) with ``SUMMARY_WHEN_OFF`` added, then every
    reporting callback's ``summary()`` on top, in callback order. Returns a new dict."""
    merged = {**summary, **copy.deepcopy(SUMMARY_WHEN_OFF)}
    for callback in callbacks:
        if not isinstance(callback, ReportsSummary):
            continue
        for key, value in callback.summary().items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged
