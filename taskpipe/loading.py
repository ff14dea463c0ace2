"""Loading the app named by ``module:attribute`` (the CLI's ``-A``, the process pool's children).

This is the app layer's own loader, so the worker and the CLI both import it downward.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from taskpipe.errors import ConfigError

if TYPE_CHECKING:
    from taskpipe.app import TaskPipe

__all__ = ["load_app"]


def load_app(path: str) -> TaskPipe:
    """Import ``module:attribute`` (or ``module``, taking its ``app``) and return the TaskPipe app.

    The attribute may also be a callable returning the app (a factory). The current directory is
    put on ``sys.path`` first, like ``python -m``. Raises ``ConfigError`` when the module cannot be
    imported or the name is not a ``TaskPipe``.
    """
    from taskpipe.app import TaskPipe

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    if not module_name or module_name.startswith("."):  # importlib's ValueError / TypeError
        raise ConfigError(
            f"-A {path!r} names no module: expected module:attribute, e.g. "
            "myproject.tasks:app (an absolute module path)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for -A {path!r}: {exc}") from None
    obj = getattr(module, attr or "app", None)
    if callable(obj) and not isinstance(obj, TaskPipe):
        obj = obj()
    if not isinstance(obj, TaskPipe):
        raise ConfigError(f"-A {path!r} does not name a TaskPipe app")
    return obj
