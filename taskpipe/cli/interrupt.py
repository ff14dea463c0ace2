"""Ctrl-C for the CLI's long reads (``taskpipe jobs logs --follow``): end at once, status 130.

A follower holds a pub/sub subscription and a Redis client. Ending it by a ``KeyboardInterrupt``
runs cleanup on the way out (the watch's ``__exit__`` closing its socket, the generator's
``finally``, the interpreter's shutdown), and any of it that waits (a socket close on a loaded
machine, a lock an interrupt left held) holds the exit up. ``exit_on_interrupt`` installs a
SIGINT handler that flushes what was printed and leaves with ``os._exit(130)``: nothing runs
after the signal, and the server drops the subscription when the process's sockets close. (A
follower only reads, so it has nothing to undo.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["exit_on_interrupt", "INTERRUPTED"]

#: the exit status of a command ended by Ctrl-C (128 + SIGINT), as a shell reports it
INTERRUPTED = 130


def _leave_now(signum: int, frame: FrameType | None) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - e.g. a reentrant write: leaving matters more
            pass
    os._exit(INTERRUPTED)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Within the block, SIGINT ends the process at once with status 130 (see the module
    docstring); the previous handler is restored after it. Outside the main thread (where no
    signal handler can be installed: an embedding program) a ``KeyboardInterrupt`` in the
    block still becomes ``SystemExit(130)``."""
    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _leave_now) if installed else None
    try:
        yield
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)  # not click.exceptions.Exit: main() drops its code
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)
