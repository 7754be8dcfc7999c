"""Errors the user can fix. The CLI prints their message alone, without a traceback.

Each message says what was wrong, where (config key, file) and what to do. Anything else
is a bug or an unexpected failure and keeps its full traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the input (config, data, files, environment) that the message explains."""


class ConfigError(UserError):
    """A configuration value the run cannot use; the message names the key."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` as the CLI prints it (DataLoader workers wrap the original
    error with their own traceback text: keep only the original message)."""
    text = str(err)
    marker = "Original Traceback (most recent call last):"
    if marker in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[-1] if ": " in last else last
    return text
