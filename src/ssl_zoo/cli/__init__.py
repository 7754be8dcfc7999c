"""The command line: `ssl-zoo` (main) and its tools (train_app, eval, viz, export)."""

from ssl_zoo.cli.main import main

__all__ = ["main"]
