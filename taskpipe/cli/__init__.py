"""The ``taskpipe`` command line (click). Each command group lives in its own module."""

from __future__ import annotations

from taskpipe.cli.main import cli, main

__all__ = ["cli", "main"]
