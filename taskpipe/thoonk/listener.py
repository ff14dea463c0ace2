"""A background thread that turns Thoonk pub/sub messages into callbacks.

``Listener(thoonk)`` subscribes to ``newfeed``, ``delfeed`` and ``conffeed`` and pattern-subscribes
to ``feed.publish:*``, ``feed.edit:*``, ``feed.retract:*``, ``feed.position:*`` and
``job.finish:*`` (all under the Thoonk object's key prefix), so it hears every object, including
ones created later. Callbacks registered with ``on(event, callback)`` run in the listener thread
and receive ``(feed_name, id, payload)``:

=============  ==========================  ===========================================
event          channel                     arguments
=============  ==========================  ===========================================
``publish``    ``feed.publish:<f>``        ``(f, id, item)``
``edit``       ``feed.edit:<f>``           ``(f, id, item)``
``retract``    ``feed.retract:<f>``        ``(f, id, None)``
``position``   ``feed.position:<f>``       ``(f, id, relpos)`` (e.g. ``b':end'``)
``finish``     ``job.finish:<f>``          ``(f, id, result)`` (``None`` if no result)
``jobevent``   ``feed.jobevent:<f>``       ``(f, kind, id\\0data)`` (taskpipe's job events)
``create``     ``newfeed``                 ``(f, instance_id, None)``
``delete``     ``delfeed``                 ``(f, instance_id, None)``
``config``     ``conffeed``                ``(f, instance_id, None)``
=============  ==========================  ===========================================

Payloads are bytes, split on the first NUL only (items may contain NUL bytes); a payload without
a NUL gives ``None``. After a dropped connection the thread reconnects (with backoff) and
subscribes again; pub/sub has no replay, so events sent while it was disconnected are missed.
A callback that raises is logged and never stops the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpipe.broker_retry import as_taskpipe_error
from taskpipe.connection import close_quietly
from taskpipe.errors import BrokerUnavailable
from taskpipe.thoonk.keys import EVENT_STEMS, JOB_EVENT_STEMS, NOTICE_CHANNELS

if TYPE_CHECKING:
    from taskpipe.thoonk.thoonk import Thoonk

__all__ = ["Listener", "EVENTS", "Callback"]

log = logging.getLogger(__name__)

#: A listener callback: ``(feed_name, id_or_instance, payload)``.
Callback = Callable[[str, str, bytes | None], Any]

EVENTS = (
    "publish",
    "edit",
    "retract",
    "position",
    "finish",
    "create",
    "delete",
    "config",
    "jobevent",
)

#: Seconds ``get_message`` waits before looking at the stop flag again.
POLL_INTERVAL = 0.2
#: Longest pause between reconnection attempts, in seconds.
MAX_BACKOFF = 2.0


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class Listener:
    """Runs callbacks for Thoonk events in a background thread (see the module docstring).

    ``start()`` returns once the subscriptions are confirmed; ``stop()`` ends the thread. It is
    also a context manager: ``with thoonk.listener() as listener: ...``.
    """

    def __init__(self, thoonk: Thoonk) -> None:
        self.thoonk = thoonk
        self._callbacks: dict[str, list[Callback]] = {event: [] for event in EVENTS}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        #: set once the first attempt of a ``start`` subscribed or failed (``_start_error``)
        self._settled = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        #: How many times the subscriptions were (re)established.
        self.connects = 0
        keys = thoonk.keys
        self._channels: dict[bytes, str] = {
            keys.k(name).encode("utf-8"): event for event, name in NOTICE_CHANNELS.items()
        }
        self._patterns: dict[bytes, tuple[str, int]] = {
            keys.ch_event_pattern(event).encode("utf-8"): (
                event,
                len(keys.ch_event(event, "").encode("utf-8")),
            )
            for event in (*EVENT_STEMS, *JOB_EVENT_STEMS)
        }

    # callbacks ------------------------------------------------------------------------------
    def on(self, event: str, callback: Callback) -> Callback:
        """Run ``callback(feed_name, id, payload)`` for every ``event``; return the callback."""
        if event not in self._callbacks:
            raise ValueError(f"unknown Thoonk event {event!r}; expected one of {EVENTS}")
        if not callable(callback):
            raise TypeError("callback must be callable")
        with self._lock:
            self._callbacks[event].append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Stop running ``callback`` for ``event`` (no error if it was not registered)."""
        with self._lock:
            callbacks = self._callbacks.get(event, [])
            if callback in callbacks:
                callbacks.remove(callback)

    # lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> Listener:
        """Start the thread and wait until it is subscribed.

        If its first attempt fails (the broker is down, refuses the password...), stop the
        thread and raise that error as a plain call would (``BrokerUnavailable``,
        ``BrokerError``), at once; raise ``BrokerUnavailable`` too if subscribing takes longer
        than ``timeout``. Once started, the thread reconnects by itself after a lost connection.
        """
        if self.running:
            return self
        self._stop.clear()
        self._ready.clear()
        self._settled.clear()
        self._start_error = None
        if self._client is None:
            self._client = self.thoonk.connection.new_client()
        self._thread = threading.Thread(target=self._run, name="thoonk-listener", daemon=True)
        self._thread.start()
        self._settled.wait(timeout)
        if self._ready.is_set():
            return self
        error = self._start_error
        self.stop()
        if error is not None:
            raise as_taskpipe_error("the Thoonk listener could not subscribe", error) from error
        raise BrokerUnavailable(f"the Thoonk listener could not subscribe within {timeout}s")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the listener is subscribed; False if ``timeout`` passed first."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits up to ``timeout`` for it) and release its connection."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._ready.clear()
        client, self._client = self._client, None
        if client is not self.thoonk.client:
            close_quietly(client)

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self._client.pubsub()
                pubsub.subscribe(*self._channels)
                pubsub.psubscribe(*self._patterns)
                pending = set(self._channels) | set(self._patterns)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_INTERVAL)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind in ("subscribe", "psubscribe"):
                        pending.discard(bytes(message["channel"]))
                        if not pending and not self._ready.is_set():
                            self.connects += 1
                            backoff = 0.05
                            self._ready.set()
                            self._settled.set()
                    elif kind in ("message", "pmessage"):
                        self._dispatch(message)
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything
                if self._stop.is_set():
                    break
                if not self._settled.is_set():  # the first attempt: start() raises it
                    self._start_error = exc
                    self._settled.set()
                    break
                self._ready.clear()
                log.warning(
                    "Thoonk listener lost its connection (%s); reconnecting in %.2fs", exc, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                close_quietly(pubsub)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = bytes(message["channel"])
        data = message["data"]
        data = data if isinstance(data, bytes) else str(data).encode("utf-8")
        head, sep, rest = data.partition(b"\0")
        if message["type"] == "pmessage":
            event, skip = self._patterns.get(bytes(message["pattern"]), ("", 0))
            if not event:
                return
            args: tuple[str, str, bytes | None] = (
                _decode(channel[skip:]),
                _decode(head),
                rest if sep else None,
            )
        else:
            event = self._channels.get(channel, "")
            if not event:
                return
            args = (_decode(head), _decode(rest), None)
        with self._lock:
            callbacks = list(self._callbacks[event])
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                log.exception(
                    "Thoonk listener callback %r failed on %s event for %r",
                    callback,
                    event,
                    args[0],
                )
