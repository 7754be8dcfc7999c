"""One wording for every callback's argument errors:
``callbacks.<name>.<key> must be <expected>, got <value>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_arg(callback: str, key: str, value: Any, ok: Callable[[Any], bool], expected: str, hint: str = "") -> None:
    """ValueError naming ``callbacks.<callback>.<key>`` unless ``ok(value)``; a value
    ``ok`` cannot even compare (a string where a number belongs) fails the same way.
    ``hint`` (what else to do) follows the message in parentheses."""
    try:
        valid = bool(ok(value))
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"callbacks.{callback}.{key} must be {expected}, got {value!r}" + (f" ({hint})" if hint else ""))

