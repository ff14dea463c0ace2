"""``taskpipe.cli.interrupt``: Ctrl-C ends a follower at once (status 130), with no cleanup
that could hold the exit up; the SIGINT handler is the previous one again after the block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from taskpipe.cli.interrupt import INTERRUPTED, exit_on_interrupt


def test_the_previous_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with exit_on_interrupt():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_an_interrupt_is_status_130() -> None:
    seen: list[object] = []

    def body() -> None:
        try:
            with exit_on_interrupt():
                raise KeyboardInterrupt
        except SystemExit as exc:
            seen.append(exc.code)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert seen == [INTERRUPTED]


@pytest.mark.timeout(60)
def test_sigint_ends_the_process_even_when_cleanup_would_block() -> None:
    # the block's cleanup waits for ever (a lock never released): a KeyboardInterrupt would
    # run it and hang; the handler leaves before any of it runs
    code = textwrap.dedent(
        """
        import os, signal, threading
        from taskpipe.cli.interrupt import exit_on_interrupt
        stuck = threading.Lock()
        stuck.acquire()
        with exit_on_interrupt():
            try:
                print("ready", flush=True)
                threading.Event().wait()
            finally:
                stuck.acquire()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
