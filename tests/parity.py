"""Load the parity fixtures (reference values from the original implementations).

The directory is ``$SSL_ZOO_PARITY_DIR``, by default ``<repo root>/../shared/parity``. A
missing fixture fails the test (never skips): parity is the point of these tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

ENV_VAR = "SSL_ZOO_PARITY_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "parity"


def parity_dir() -> Path:
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


def load_fixture(name: str) -> dict[str, Any]:
    """``load_fixture("koleo")`` -> the dict stored in ``<parity dir>/koleo.pt``."""
    path = parity_dir() / (name if name.endswith(".pt") else f"{name}.pt")
    if not path.is_file():
        pytest.fail(
            f"parity fixture not found: {path} (set {ENV_VAR} to the directory holding the "
            f"parity .pt files; default {DEFAULT_DIR})",
            pytrace=False,
        )
    return torch.load(path, weights_only=True)
